"""Complete checkpoints only: a completion manifest per `checkpoint-N/`, and resume points that honour it.

transformers (5.x) writes `checkpoint-N/` in place, file after file (weights, masks, optimizer, scheduler,
RNG states, `trainer_state.json`), and `get_last_checkpoint` returns the highest step whether or not its
writer finished: a run killed during a save leaves a folder that resuming crashes on, or silently
resumes from with a stale optimizer. `SparseTrainer` therefore writes `checkpoint_complete.json` (every
file's relative name and size, after fsync'ing them) as the very last step of each checkpoint save, and
every resume point goes through `last_complete_checkpoint`, which skips folders whose manifest is
missing or does not match the disk. Incomplete folders are named in a warning and left where they are:
nothing a user produced is deleted here.
"""

from __future__ import annotations

import json
import os
import re
import time

from safetensors import safe_open
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from smc_trainer.errors import UsageError
from smc_trainer.version import __version__

logger = logging.get_logger(__name__)

COMPLETE_NAME = "checkpoint_complete.json"
_STEP = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(folder: str) -> dict[str, int]:
    """Relative path -> size in bytes of every file under `folder` but the manifest itself."""
    sizes = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel != COMPLETE_NAME and not name.startswith(f".{COMPLETE_NAME}"):
                sizes[rel] = os.path.getsize(path)
    return dict(sorted(sizes.items()))


def write_manifest(folder: str, step: int | None = None) -> dict:
    """Declare `folder` complete: fsync its files, then atomically write the manifest of their names and sizes."""
    files = _files(folder)
    for rel in files:
        _fsync_path(os.path.join(folder, rel))
    manifest = {"format": "smc_trainer.checkpoint_manifest", "version": 1, "smc_trainer": __version__,
                "global_step": step, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": files}
    tmp = os.path.join(folder, f".{COMPLETE_NAME}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(folder, COMPLETE_NAME))
    _fsync_path(folder)
    return manifest


def clear_manifest(folder: str) -> None:
    """Withdraw a folder's manifest before it is written again (a save over an existing checkpoint-N)."""
    path = os.path.join(folder, COMPLETE_NAME)
    if os.path.isfile(path):
        os.remove(path)
        _fsync_path(folder)


def incomplete_reason(folder: str) -> str | None:
    """Why `folder` is not a complete checkpoint, or None when its manifest matches the disk."""
    path = os.path.join(folder, COMPLETE_NAME)
    if not os.path.isdir(folder):
        return "no such directory"
    if not os.path.isfile(path):
        return f"no {COMPLETE_NAME}: its save was interrupted (or it predates completion manifests)"
    try:
        with open(path, encoding="utf-8") as fh:
            files = json.load(fh)["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable {COMPLETE_NAME} ({err})"
    for rel, size in files.items():
        full = os.path.join(folder, rel)
        if not os.path.isfile(full):
            return f"{rel} is missing"
        if os.path.getsize(full) != size:
            return f"{rel} has {os.path.getsize(full)} bytes, the manifest says {size}"
    return None


def check_safetensors(path: str, what: str, hint: str = "restore it, or resume from another checkpoint") -> None:
    """Open `path`'s header with safetensors' `safe_open` (cheap: no tensor is read); a corrupt or truncated file
    is a user error naming it."""
    try:
        with safe_open(path, framework="pt") as fh:
            fh.keys()
    except Exception as err:  # safetensors raises its own SafetensorError (header too small, not fully covered)
        raise UsageError(f"{what}: {path} is corrupt or truncated ({os.path.getsize(path)} bytes; {err}); "
                         f"{hint}") from err


def check_checkpoint_files(folder: str, what: str = "--resume_from_checkpoint") -> None:
    """The safetensors files of a checkpoint (weights, masks) have readable headers: checked before resuming."""
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            check_safetensors(os.path.join(folder, name), what)


def is_complete(folder: str) -> bool:
    return incomplete_reason(folder) is None


def list_checkpoints(run_dir: str) -> list[str]:
    """The `checkpoint-N` folders in `run_dir`, oldest step first."""
    if not os.path.isdir(run_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(run_dir)
             if (m := _STEP.match(name)) and os.path.isdir(os.path.join(run_dir, name))]
    return [os.path.join(run_dir, name) for _, name in sorted(found)]


def incomplete_checkpoints(run_dir: str) -> list[str]:
    """Checkpoint folders in `run_dir` that must never be resumed from."""
    return [c for c in list_checkpoints(run_dir) if not is_complete(c)]


def last_complete_checkpoint(run_dir: str) -> str | None:
    """The highest-step complete checkpoint in `run_dir`; newer incomplete ones are skipped with a warning."""
    skipped = []
    for folder in reversed(list_checkpoints(run_dir)):
        reason = incomplete_reason(folder)
        if reason is None:
            if skipped:
                logger.warning(f"Skipping incomplete checkpoint(s) {'; '.join(skipped)}; using {folder}. "
                               "They are left in place.")
            return folder
        skipped.append(f"{folder} ({reason})")
    if skipped:
        logger.warning(f"No complete checkpoint in {run_dir}; incomplete: {'; '.join(skipped)}")
    return None


LAST_WORDS = ("true", "last")  # `--resume_from_checkpoint true|last`: the flag's spelling of True


def incomplete_detail(run_dir: str) -> str:
    """The incomplete checkpoints of `run_dir`, each with why (`checkpoint-4 (sparse_masks.safetensors is
    missing)`), for an error message; empty when there are none."""
    return "; ".join(f"{c} ({incomplete_reason(c)})" for c in incomplete_checkpoints(run_dir))


def resolve_resume_checkpoint(resume: str | bool | None, output_dir: str) -> str | None:
    """`Trainer.train(resume_from_checkpoint=...)` made safe: True (or 'true'/'last') -> the last complete
    checkpoint of `output_dir`; a run folder holding `checkpoint-N` folders -> its last complete one; a
    checkpoint path -> itself if complete, else a ValueError naming the flag, the path and why. (The CLI also
    checks the chosen checkpoint's safetensors headers: `check_checkpoint_files`.)"""
    if resume is None or resume is False:
        return None
    if isinstance(resume, str) and resume.strip().lower() in LAST_WORDS and not os.path.isdir(resume):
        resume = True
    if resume is True:
        last = last_complete_checkpoint(output_dir)
        if last is None:
            detail = incomplete_detail(output_dir)
            raise UsageError(f"--resume_from_checkpoint true, but {output_dir} holds no complete checkpoint"
                             + (f" (incomplete, left in place: {detail})" if detail else ""))
        return last
    if list_checkpoints(resume) and not os.path.isfile(os.path.join(resume, COMPLETE_NAME)):  # a run folder
        last = last_complete_checkpoint(resume)
        if last is None:
            raise UsageError(f"--resume_from_checkpoint {resume} is a run folder with no complete checkpoint "
                             f"(incomplete, left in place: {incomplete_detail(resume)})")
        return last
    reason = incomplete_reason(resume)
    if reason is not None:
        last = last_complete_checkpoint(os.path.dirname(os.path.abspath(resume)))
        hint = f"; the last complete checkpoint beside it is {last}" if last else ""
        raise UsageError(
            f"--resume_from_checkpoint {resume} is not a complete checkpoint ({reason}){hint}. If you know it is "
            f"complete, declare it so with `python -c \"from smc_trainer.training.checkpoints import write_manifest; "
            f"write_manifest('{resume}')\"`"
        )
    return resume
