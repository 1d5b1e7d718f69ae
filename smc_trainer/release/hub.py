"""Sparse releases: one folder that loads with plain `from_pretrained` and says everything about its sparsity.

`save_sparse_pretrained` (or `SparseTrainer.save_sparse_pretrained`) writes:
- `model.safetensors` + `config.json` (+ tokenizer files): standard, pruned weights as exact zeros;
  config.json gains a `sparsity` entry (method, target, achieved, distribution, scope, per-layer);
- `sparse_masks.safetensors` (bool masks) and `sparsity_report.json` (per-layer counts);
- `smc_run_config.json` (version, reproduce command, recipe, argument dataclasses), `all_results.json`;
- `README.md`, the model card (smc_trainer.release.model_card);
- optionally `model.sparse.safetensors`, the bitmask format of smc_trainer.release.compressed.

`push_sparse_folder` uploads such a folder with `HfApi.create_repo` + `upload_folder` (checkpoints and
run-only files left out); `load_sparse_pretrained(repo_id_or_path)` brings back model, masks, report,
metrics and run configuration, from the Hub (`snapshot_download`) or a local folder.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import HfApi, constants, get_token, snapshot_download
from huggingface_hub.utils import LocalEntryNotFoundError
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor
from transformers.utils import logging

from smc_trainer.engine.masks import MASKS_NAME, REPORT_NAME, MaskSet
from smc_trainer.errors import ExistingOutputError, MissingFileError, OfflineError, UsageError
from smc_trainer.release.compressed import COMPRESSED_NAME, load_compressed, save_compressed
from smc_trainer.release.model_card import CardFacts, is_hub_id, model_card
from smc_trainer.version import __version__

if TYPE_CHECKING:
    from smc_trainer.runs.run_config import RunConfig
    from smc_trainer.training.arguments import SparseTrainingArguments

logger = logging.get_logger(__name__)

RUN_CONFIG_NAME = "smc_run_config.json"
METRICS_NAME = "all_results.json"
CARD_NAME = "README.md"
CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"  # peft's; with adapter_model.safetensors, an adapter release
# files of a run folder that are no part of its release (checkpoints, the dense cache's rewind point, pickles)
PUSH_IGNORE = ["checkpoint-*", "_*", ".*", "runs/*", "*.lock", "*.pth", "*.pt", "*.bin", "init_model.safetensors",
               "COMPLETE", "cache_key.json"]
# files a release owns: deleted from the repository on push unless uploaded again, so that a stale mask, weight
# shard or compressed copy from an earlier push never sits beside the new weights (a stale mask breaks loading)
RELEASE_OWNED = ["model*.safetensors", SAFE_INDEX_NAME, MASKS_NAME, REPORT_NAME, RUN_CONFIG_NAME, METRICS_NAME,
                 ADAPTER_CONFIG_NAME, "adapter_model.safetensors"]


# ---- writing ------------------------------------------------------------------------------------


def weight_files(folder: str) -> list[str]:
    """The safetensors weight files `save_pretrained` wrote in `folder` (one file, or the shards of an index)."""
    index = os.path.join(folder, SAFE_INDEX_NAME)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as fh:
            return [os.path.join(folder, f) for f in sorted(set(json.load(fh)["weight_map"].values()))]
    single = os.path.join(folder, SAFE_WEIGHTS_NAME)
    return [single] if os.path.isfile(single) else []


def _saved_parameter_count(folder: str) -> int:
    """Values stored in the saved weight files (tied weights once), read from the safetensors headers."""
    total = 0
    for path in weight_files(folder):
        with safe_open(path, framework="pt") as fh:
            names = list(fh.keys())
            total += sum(math.prod(fh.get_slice(name).get_shape()) for name in names)
    return total


def _saved_zero_fraction(folder: str) -> float | None:
    """The share of exact zeros among all values of the saved weight files (one tensor in memory at a time)."""
    zeros = total = 0
    for path in weight_files(folder):
        with safe_open(path, framework="pt") as fh:
            names = list(fh.keys())
            for name in names:
                tensor = fh.get_tensor(name)
                zeros += tensor.numel() - int(torch.count_nonzero(tensor))
                total += tensor.numel()
    return zeros / total if total else None


def sparsity_config(masks: MaskSet, info: Mapping[str, Any], total_parameters: int | None = None) -> dict[str, Any]:
    """The `sparsity` entry of config.json, measured from the masks and the weights themselves."""
    from smc_trainer.methods import get_method_class, method_names

    report = masks.report()
    scope_keys = ("prune_embeddings", "prune_heads", "prune_include", "prune_exclude", "prune_modules",
                  "decoder_blocks_only")
    return {
        "format": "smc_trainer",
        "smc_trainer_version": __version__,
        "method": info["method"],
        "phase": get_method_class(info["method"]).phase if info["method"] in method_names() else None,
        "target_sparsity": info["target_sparsity"],
        "achieved_sparsity": report["measured_sparsity"],
        "mask_sparsity": report["mask_sparsity"],
        "distribution": info.get("distribution"),
        "scope": {k: info[k] for k in scope_keys if k in info},
        "prunable_parameters": report["prunable_parameters"],
        "total_parameters": total_parameters,
        "optimizer_steps": info.get("optimizer_steps"),
        "masks_file": MASKS_NAME if masks.active else None,
        "layers": {r["name"]: round(1.0 - r["nonzero"] / max(1, r["total"]), 6) for r in report["layers"]},
        "adapter": info.get("adapter"),
    }


def _write_json(path: str, data: Any, indent: int = 2) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=indent, sort_keys=True, default=str)
        fh.write("\n")
    os.replace(tmp, path)


def _add_sparsity_to_config(folder: str, sparsity: dict[str, Any]) -> None:
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        raise MissingFileError(f"{path} is missing: save the model (save_pretrained) before its sparse release files")
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    config["sparsity"] = sparsity
    _write_json(path, config)


def _describe_run(run_config: RunConfig | SparseTrainingArguments | None) -> tuple[str | None, str | None]:
    """(base model id, dataset description) of a run, when the configuration says."""
    model_args = getattr(run_config, "model_args", None)
    data_args = getattr(run_config, "data_args", None)
    base = getattr(model_args, "model_name_or_path", None)
    dataset = None
    if data_args is not None:
        if data_args.dataset_name:
            dataset = data_args.dataset_name
        elif data_args.train_file or data_args.data_dir:
            dataset = f"local files ({data_args.train_file or data_args.data_dir})"
        elif run_config.recipe.task == "quickstart":
            dataset = "synthetic multiple-choice questions generated offline (quickstart)"
    return base, dataset


def write_release_files(
    output_dir: str,
    masks: MaskSet,
    info: Mapping[str, Any],
    *,
    metrics: Mapping[str, float] | None = None,
    run_config: RunConfig | SparseTrainingArguments | None = None,
    compressed: bool = False,
    base_model: str | None = None,
    dataset: str | None = None,
    repo_id: str | None = None,
) -> dict[str, Any]:
    """Everything of a sparse release but the model, tokenizer, masks and report (already in `output_dir`):
    sparsity in config.json, metrics, run configuration, optional compressed weights, then the card.

    `info` is `SparseTrainer.sparsity_metadata()` (method, target, distribution, scope, steps). Returns the
    `sparsity` dict written into config.json.
    """
    from smc_trainer.release.provenance import run_config_dict

    files = weight_files(output_dir)
    sparsity = sparsity_config(masks, info, _saved_parameter_count(output_dir) if files else None)
    adapter_only = is_adapter_release(output_dir)
    if not adapter_only:  # an adapter release has no config.json: its sparsity is in the report and the card
        _add_sparsity_to_config(output_dir, sparsity)
    if metrics is not None:
        _write_json(os.path.join(output_dir, METRICS_NAME), dict(metrics), indent=4)
    run = run_config_dict(run_config) if run_config is not None else None
    if run is not None:
        _write_json(os.path.join(output_dir, RUN_CONFIG_NAME), run)
    sizes = None
    if compressed:
        state = {k: v for path in files for k, v in load_file(path).items()}
        small = save_compressed(state, os.path.join(output_dir, COMPRESSED_NAME))
        sizes = {"dense_bytes": sum(os.path.getsize(p) for p in files), "compressed_bytes": small}
        logger.info(f"{COMPRESSED_NAME}: {small:,} bytes, {small / sizes['dense_bytes']:.3f}x the dense file")
    elif os.path.isfile(os.path.join(output_dir, COMPRESSED_NAME)):  # an earlier save's copy of older weights
        os.remove(os.path.join(output_dir, COMPRESSED_NAME))
        logger.warning(f"removed the stale {COMPRESSED_NAME} of an earlier save from {output_dir} (this save is "
                       "not compressed; it held older weights)")
    base_id, described = _describe_run(run_config)
    architectures = (_read_json(os.path.join(output_dir, CONFIG_NAME)) or {}).get("architectures") or [None]
    args = getattr(run_config, "training_args", run_config)
    facts = CardFacts(
        sparsity=sparsity,
        layers=masks.layer_report(),
        metrics=dict(metrics or {}),
        run=run,
        architecture=architectures[0],
        base_model=base_model or base_id,
        base_model_id=base_id if is_hub_id(base_id) else None,
        dataset=dataset or described,
        repo_id=repo_id or getattr(args, "hub_model_id", None),
        files={n: os.path.getsize(os.path.join(output_dir, n)) for n in os.listdir(output_dir)
               if os.path.isfile(os.path.join(output_dir, n))},
        compressed=sizes,
        pattern=info.get("sparsity_pattern"),
        overall_sparsity=_saved_zero_fraction(output_dir),
    )
    model_card(facts).save(os.path.join(output_dir, CARD_NAME))
    return sparsity


def is_adapter_release(folder: str) -> bool:
    """A LoRA run's adapter-only release (`--lora_release adapter`): adapter files, no plain model."""
    return os.path.isfile(os.path.join(folder, ADAPTER_CONFIG_NAME)) and not weight_files(folder)


def check_release_dir(output_dir: str, overwrite: bool = False) -> None:
    """Refuse to write a release into a folder that already holds files (never replace a user's files
    silently): a FileExistsError naming some of them, unless `overwrite`."""
    if overwrite or not os.path.isdir(output_dir):
        return
    present = sorted(os.listdir(output_dir))
    if present:
        shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
        raise ExistingOutputError(f"{output_dir} is not empty (it holds {shown}); writing a sparse release there would "
                                  "replace files in it. Choose a new or empty folder, or pass overwrite=True.")


def save_sparse_pretrained(
    model: torch.nn.Module,
    masks: MaskSet,
    output_dir: str,
    *,
    processing_class: Any = None,
    info: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    run_config: RunConfig | SparseTrainingArguments | None = None,
    compressed: bool = False,
    overwrite: bool = False,
) -> str:
    """Write a sparse release of `model` (a `PreTrainedModel` whose `masks` are installed) to `output_dir`,
    which must be new or empty unless `overwrite`.

    `info` names the method, target and scope (`SparseTrainer.sparsity_metadata()`); without it the masks
    count as 'external' at their own sparsity. With a Trainer, use `SparseTrainer.save_sparse_pretrained`,
    which also writes the method state and saves correctly under DDP/FSDP.
    """
    check_release_dir(output_dir, overwrite)
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    if processing_class is not None:
        processing_class.save_pretrained(output_dir)
    info = dict(info) if info is not None else {"method": "external", "target_sparsity": round(masks.sparsity(), 6)}
    masks.save(output_dir, extra_report=info)
    write_release_files(output_dir, masks, info, metrics=metrics, run_config=run_config, compressed=compressed)
    return output_dir


# ---- pushing ------------------------------------------------------------------------------------


def check_push_args(args: SparseTrainingArguments) -> str | None:
    """Reject --push_to_hub settings that cannot work, before any training (no network); returns the token."""
    if not args.push_to_hub:
        return None
    if constants.HF_HUB_OFFLINE:
        raise UsageError("--push_to_hub needs the network, but HF_HUB_OFFLINE=1; unset it, or drop --push_to_hub "
                         "and push the finished run later with `python run_smc.py push OUTPUT_DIR --hub_model_id ...`")
    if not args.hub_model_id:
        raise UsageError("--push_to_hub needs --hub_model_id (the repository to create or update, e.g. "
                         "your-name/roberta-large-csqa-gmp-0.59); got none")
    token = args.hub_token or get_token()
    if token is None:
        raise UsageError("--push_to_hub needs a Hub token with write access: pass --hub_token, set HF_TOKEN, or log in "
                         "with `hf auth login`")
    return token


def prepare_push(args: SparseTrainingArguments) -> str | None:
    """Check the push flags and create (or reach) the repository before training; returns its full id
    (None without --push_to_hub, and on every process but the first: one process pushes)."""
    token = check_push_args(args)
    if token is None or args.process_index != 0:
        return None
    try:
        url = HfApi(token=token).create_repo(args.hub_model_id, private=args.hub_private_repo, exist_ok=True)
    except Exception as err:  # auth, permission or network: say which flag before hours of training
        raise UsageError(f"--push_to_hub: cannot create or reach the repository {args.hub_model_id!r} with the "
                         f"given token ({type(err).__name__}: {err})") from err
    return url.repo_id


def is_sparse_release(folder: str) -> bool:
    if os.path.isfile(os.path.join(folder, CARD_NAME)) and is_adapter_release(folder):
        return os.path.isfile(os.path.join(folder, "adapter_model.safetensors"))
    return os.path.isfile(os.path.join(folder, CARD_NAME)) and os.path.isfile(os.path.join(folder, CONFIG_NAME)) \
        and bool(weight_files(folder) or os.path.isfile(os.path.join(folder, COMPRESSED_NAME)))


def push_sparse_folder(
    folder: str,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create: bool = True,
    run_as_future: bool = False,
):
    """Upload the sparse release in `folder` to the model repository `repo_id` (created if `create`)."""
    if constants.HF_HUB_OFFLINE:
        raise UsageError(f"pushing {folder} to {repo_id!r} needs the network, but HF_HUB_OFFLINE=1")
    if not is_sparse_release(folder):
        raise UsageError(f"{folder} is not a sparse release (it needs {CARD_NAME}, {CONFIG_NAME} and the weights); "
                         "write one with save_sparse_pretrained first")
    api = HfApi(token=token)
    if create:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    s = (_read_json(os.path.join(folder, CONFIG_NAME)) or {}).get("sparsity") or {}
    if not s:  # an adapter release: the report holds the same facts
        report = _read_json(os.path.join(folder, REPORT_NAME)) or {}
        s = {"method": report.get("method"), "achieved_sparsity": report.get("measured_sparsity", 0)}
    message = commit_message or f"smc-trainer: {s.get('method')} at sparsity {s.get('achieved_sparsity', 0):.4f}"
    logger.info(f"Uploading {folder} to {repo_id}")
    return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message, revision=revision,
                             ignore_patterns=PUSH_IGNORE, delete_patterns=RELEASE_OWNED, run_as_future=run_as_future)


# ---- loading ------------------------------------------------------------------------------------


@dataclass
class SparseCheckpoint:
    """A loaded sparse release. `masks` feed `SparseTrainer(initial_masks=...)` to keep training at this mask."""

    model: Any
    masks: dict[str, Tensor]
    report: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    run_config: dict[str, Any] | None = None
    path: str = ""


def resolve_release(repo_id_or_path: str, *, revision: str | None = None, token: str | None = None,
                    cache_dir: str | None = None) -> str:
    """A local folder as is; a Hub id through `snapshot_download` (the cache only, when HF_HUB_OFFLINE=1)."""
    if os.path.isdir(repo_id_or_path):
        return repo_id_or_path
    try:
        return snapshot_download(repo_id_or_path, revision=revision, token=token, cache_dir=cache_dir)
    except LocalEntryNotFoundError as err:
        raise OfflineError(f"{repo_id_or_path!r} is neither a local folder nor a Hub repository in the local "
                           "cache, and the Hub cannot be reached (HF_HUB_OFFLINE=1 or no network). Pass the path of "
                           "a folder written by save_sparse_pretrained (or run_smc.py's --output_dir) "
                           "instead.") from err


def _read_json(path: str) -> Any:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _model_class(path: str):
    import transformers

    architectures = (_read_json(os.path.join(path, CONFIG_NAME)) or {}).get("architectures") or []
    for name in architectures:
        if hasattr(transformers, name):
            return getattr(transformers, name)
    return transformers.AutoModel


def check_masks(model: torch.nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Every mask names a parameter of `model`, has its shape, and every pruned weight is exactly zero."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise UsageError(f"mask {name!r} names no parameter of {type(model).__name__}; load the release with the "
                             "class it was trained with (its config.json 'architectures')")
        weight = params[name].detach()
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(weight.shape):
            raise UsageError(f"mask {name!r} is {mask.dtype} {tuple(mask.shape)}; the weight is {tuple(weight.shape)}")
        if bool((weight[~mask.to(weight.device)] != 0).any()):
            raise UsageError(f"weight {name!r} is non-zero where its mask prunes it: the weights and "
                             f"{MASKS_NAME} do not belong together")


def load_sparse_pretrained(
    repo_id_or_path: str,
    model_class: Any = None,
    *,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | None = None,
    verify: bool = True,
    sparse_inference: bool | float | str = False,
    semi_structured: bool = False,
    **model_kwargs: Any,
) -> SparseCheckpoint:
    """Load a sparse release (Hub id or local folder): the model with `model_class` (default: the class in
    config.json), the bool masks, the sparsity report, the metrics and the run configuration. Reads
    model.sparse.safetensors when the dense weights are absent. `verify` checks that the masks fit.

    `sparse_inference` (True, or a minimum sparsity) runs the linears sparse enough to gain as CSR matmuls on the
    CPU (`smc_trainer.release.sparse_inference`; linears reading the same input, such as query/key/value, as one
    matrix); "measure" converts each linear at least half zeros that a quick micro-benchmark on this machine finds
    faster sparse. `semi_structured` moves the model to the GPU in
    float16 and runs its 2:4 linears on sparse tensor cores (`smc_trainer.release.semi_structured`; refused where
    they cannot run).
    """
    if isinstance(sparse_inference, str) and sparse_inference != "measure":
        raise UsageError(f"sparse_inference must be True, False, a minimum sparsity or 'measure'; got "
                         f"{sparse_inference!r}")
    if sparse_inference and semi_structured:
        raise UsageError("pick one of sparse_inference (CPU CSR) and semi_structured (GPU 2:4)")
    if semi_structured:
        from smc_trainer.release.semi_structured import semi_structured_unavailable

        reason = semi_structured_unavailable()
        if reason is not None:
            raise UsageError(f"semi_structured=True: {reason}")
    path = resolve_release(repo_id_or_path, revision=revision, token=token, cache_dir=cache_dir)
    cls = model_class or _model_class(path)
    if weight_files(path):
        model = cls.from_pretrained(path, **model_kwargs)
    elif os.path.isfile(os.path.join(path, COMPRESSED_NAME)):
        from transformers import AutoConfig

        state = load_compressed(os.path.join(path, COMPRESSED_NAME))
        model = cls.from_pretrained(None, config=AutoConfig.from_pretrained(path), state_dict=state, **model_kwargs)
    else:
        raise MissingFileError(f"{path} holds neither {SAFE_WEIGHTS_NAME} nor {COMPRESSED_NAME}")
    masks_path = os.path.join(path, MASKS_NAME)
    masks = load_file(masks_path) if os.path.isfile(masks_path) else {}
    if verify:
        check_masks(model, masks)
    if sparse_inference:
        from smc_trainer.release.sparse_inference import BREAK_EVEN_SPARSITY, MEASURE_TOKENS, to_sparse_inference

        if sparse_inference == "measure":  # every linear at least half zeros, converted where it runs faster here
            to_sparse_inference(model, 0.5, measure_tokens=MEASURE_TOKENS)
        else:
            to_sparse_inference(model, BREAK_EVEN_SPARSITY if sparse_inference is True else float(sparse_inference))
    if semi_structured:
        from smc_trainer.release.semi_structured import to_semi_structured

        to_semi_structured(model.to(device="cuda", dtype=torch.float16).eval())
    return SparseCheckpoint(model=model, masks=masks, report=_read_json(os.path.join(path, REPORT_NAME)) or {},
                            metrics=_read_json(os.path.join(path, METRICS_NAME)) or {},
                            run_config=_read_json(os.path.join(path, RUN_CONFIG_NAME)), path=path)
