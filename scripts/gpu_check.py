"""The GPU check, one command: what smc-trainer promises on a GPU, each row pass / fail / skip with its number.

    python scripts/gpu_check.py                        # one GPU (sized for 8 minutes on an H100; not yet timed)
    python scripts/gpu_check.py --device cpu --small   # the rows a CPU can run, at small sizes (a self-test)

Rows:
- `amp bf16`, `amp fp16`: a tiny BERT fine-tuned through SparseTrainer with GMP under autocast; every pruned weight
  exactly zero after every optimizer step. fp16 gets an inf gradient planted in one step, which the grad scaler
  must skip: the weights do not move on it and the schedule does not count it. Number: pruned non-zeros.
- `2:4 speed`: an fp16 linear made 2:4 by magnitude and converted by `smc_trainer.release.semi_structured`
  (`torch.sparse.to_sparse_semi_structured`) against the dense one (4096 x 4096 weight, 4096 tokens), outputs
  compared. Number: dense time / 2:4 time (pass above 1).
- `fsdp2 masks`: the tiny BERT sharded with torch's `fully_shard` (world size 1), AdamW with masks applied to the
  local shards and one magnitude re-prune midway, against the same run unsharded. Number: differing mask entries.
- `fsdp2 accelerate`: whether accelerate, in the environment `accelerate launch --use_fsdp --fsdp_version 2
  --num_processes 1` sets, wraps a model in FSDP2 (DTensor weights) and runs one dense AdamW step.
- `fsdp2 trainer`: whether SparseTrainer still refuses sparse methods under FSDP (docs/scale_out.md); skip if so.
- `sparsegpt 7B widths`: one-shot SparseGPT (50%, uniform) of a random Llama of 7B widths (hidden 4096, MLP 11008,
  32 heads, 2 blocks) calibrated block by block on cached inputs (`HookCalibrator`). Number: seconds; note: peak
  memory.

Prints one table; exit status 1 when any row fails. `--json PATH` also writes the rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's smc_trainer

VOCAB, SEQ = 64, 16


@dataclass
class Row:
    row: str
    status: str  # pass, fail, skip
    number: str
    note: str


def check(condition: bool) -> str:
    return "pass" if condition else "fail"


# ---- a tiny model and data ------------------------------------------------------------------------


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def toy_dataset(n: int = 128):
    from datasets import Dataset

    ids = torch.randint(1, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(0))
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids == 5).any(dim=1).long().tolist()})


# ---- mixed precision through SparseTrainer ----------------------------------------------------------


def amp_row(dtype: str, device: str, steps: int = 12, skip_at: int = 4) -> Row:
    """GMP to 50% under bf16 or fp16 autocast; fp16 plants an inf gradient in optimizer step `skip_at`."""
    if dtype == "fp16" and device == "cpu":
        return Row("amp fp16", "skip", "-", "accelerate runs --fp16 (autocast + grad scaler) only on GPUs; "
                   "tests/training/test_precision.py emulates it on CPU")
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from smc_trainer import SparseTrainer, SparseTrainingArguments
    from smc_trainer.engine.selection import keep_count

    with tempfile.TemporaryDirectory() as out:
        args = SparseTrainingArguments(
            output_dir=out, sparse_method="gmp", sparsity=0.5, gmp_start=0.0, gmp_end=0.5, prune_frequency=1,
            max_steps=steps, per_device_train_batch_size=16, learning_rate=5e-3, report_to="none",
            save_strategy="no", logging_steps=10**6, disable_tqdm=True, seed=0, use_cpu=device == "cpu",
            bf16=dtype == "bf16", fp16=dtype == "fp16")
        trainer = SparseTrainer(model=tiny_bert(), args=args, train_dataset=toy_dataset())
        trainer.remove_callback(PrinterCallback)  # the table is this script's only stdout
        seen: dict = {"leaks": 0, "moved": [], "steps": [], "act": set()}
        probe = trainer.model.bert.encoder.layer[0].intermediate.dense
        probe.register_forward_hook(lambda m, i, o: seen["act"].add(o.dtype))
        if dtype == "fp16":  # an inf in one gradient: the scaler must skip this optimizer step
            weight = probe.weight
            weight.register_hook(lambda g: g.index_fill(0, torch.tensor([0], device=g.device), float("inf"))
                                 if trainer.state.global_step == skip_at - 1 else g)

        class Watch(TrainerCallback):
            def on_step_begin(self, *a, **k):
                seen["before"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

            def on_step_end(self, *a, **k):
                masks = trainer.masks
                seen["leaks"] += sum(int(torch.count_nonzero(t.param.detach()[~masks.masks[t.name]]))
                                     for t in masks.targets if t.name in masks.masks)
                seen["moved"].append(any(not torch.equal(p.detach(), seen["before"][n])
                                         for n, p in trainer.model.named_parameters()))
                seen["steps"].append(trainer.sparsity_callback.step)

        trainer.add_callback(Watch())
        trainer.train()
    want_act = torch.bfloat16 if dtype == "bf16" else torch.float16
    skipped = [i + 1 for i, moved in enumerate(seen["moved"]) if not moved]
    ok = seen["leaks"] == 0 and seen["act"] == {want_act} and len(seen["moved"]) == steps
    kept = sum(int(m.sum()) for m in trainer.masks.masks.values())
    ok = ok and seen["steps"][-1] == steps - len(skipped) and kept == keep_count(0.5, trainer.masks.total)
    note = f"{steps} steps, autocast {want_act}, final sparsity {trainer.masks.sparsity():.4f}"
    if dtype == "fp16":
        ok = ok and skip_at in skipped
        note += f"; skipped steps {skipped} (inf planted in {skip_at}), schedule counted {seen['steps'][-1]}"
    return Row(f"amp {dtype}", check(ok), f"{seen['leaks']} pruned non-zeros", note)


# ---- 2:4 semi-structured speed ----------------------------------------------------------------------


@torch.no_grad()
def semi_structured_row(device: str, size: int, tokens: int) -> Row:
    """A float16 linear made 2:4 by magnitude (`nm_keep_mask`), converted by `to_semi_structured`, against dense."""
    from smc_trainer.engine.patterns import NMPattern, nm_keep_mask
    from smc_trainer.release.semi_structured import semi_structured_unavailable, to_semi_structured

    reason = semi_structured_unavailable(device)
    if reason is not None:
        return Row("2:4 speed", "skip", "-", reason)
    torch.manual_seed(0)
    dense = torch.nn.Linear(size, size, bias=False).half().cuda()
    dense.weight.mul_(nm_keep_mask(dense.weight.abs(), NMPattern(2, 4)))
    sparse = torch.nn.Sequential(torch.nn.Linear(size, size, bias=False).half().cuda())
    sparse[0].weight.copy_(dense.weight)
    converted = to_semi_structured(sparse)
    x = torch.randn(tokens, size, device="cuda", dtype=torch.float16)
    dense_s, sparse_s = cuda_time(lambda: dense(x)), cuda_time(lambda: sparse(x))
    ref = dense(x).float()
    err = float((sparse(x).float() - ref).abs().max() / ref.abs().max())
    ratio = dense_s / sparse_s
    return Row("2:4 speed", check(converted == ["0"] and err < 1e-2 and ratio > 1.0), f"{ratio:.2f}x",
               f"dense / 2:4 time, fp16 {size}x{size} weight, {tokens} tokens: dense {dense_s * 1e3:.3f} ms, 2:4 "
               f"{sparse_s * 1e3:.3f} ms; max rel. error {err:.1e}")


def cuda_time(fn: Callable[[], torch.Tensor], repeat: int = 50) -> float:
    """Median seconds of one call, timed with CUDA events after a warm-up."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


# ---- FSDP2 at world size 1 --------------------------------------------------------------------------


def _sparse_train(model, device: str, sharded: bool, steps: int = 6, reprune_at: int = 3) -> dict:
    """AdamW on the tiny BERT with global magnitude masks (50%, re-selected at `reprune_at`), pruned weights zeroed
    after every step. Sharded: the masks act on each DTensor's local shard (the whole weight at world size 1)."""
    from smc_trainer import find_targets
    from smc_trainer.engine.selection import global_keep_masks

    def local(p):
        return p.to_local() if hasattr(p, "to_local") else p

    targets = find_targets(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batches = torch.randint(1, VOCAB, (steps, 8, SEQ), generator=torch.Generator().manual_seed(1)).to(device)
    masks: dict = {}
    for step in range(steps):
        if step in (0, reprune_at):
            masks = global_keep_masks({t.name: local(t.param).detach().abs() for t in targets}, 0.5)
        loss = model(input_ids=batches[step], labels=(batches[step] == 5).any(dim=1).long()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            for t in targets:
                local(t.param).mul_(masks[t.name])
    weights = {t.name: local(t.param).detach().clone() for t in targets}
    return {"masks": masks, "weights": weights,
            "dtensor": all(type(t.param).__name__ == "DTensor" for t in targets) if sharded else None}


def fsdp2_row(device: str) -> Row:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    plain = _sparse_train(tiny_bert().to(device), device, sharded=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model = tiny_bert().to(device)
        for layer in model.bert.encoder.layer:
            fully_shard(layer)
        fully_shard(model)
        sharded = _sparse_train(model, device, sharded=True)
    finally:
        dist.destroy_process_group()
    differ = sum(int((plain["masks"][n] != sharded["masks"][n]).sum()) for n in plain["masks"])
    drift = max(float((plain["weights"][n] - sharded["weights"][n]).abs().max()) for n in plain["weights"])
    zeros = all(bool((sharded["weights"][n][~sharded["masks"][n]] == 0).all()) for n in sharded["masks"])
    ok = differ == 0 and zeros and sharded["dtensor"] and drift <= 1e-6
    return Row("fsdp2 masks", check(ok), f"{differ} mask entries differ",
               f"fully_shard on {backend}, world size 1, weights DTensor: {sharded['dtensor']}; 6 AdamW steps, "
               f"re-pruned at 3; max weight difference {drift:.1e}; pruned weights zero: {zeros}")


def fsdp2_accelerate_worker() -> None:
    """In a process set up as `accelerate launch --use_fsdp --fsdp_version 2 --num_processes 1` sets it up: whether
    accelerate wraps a model in FSDP2 (sharded DTensor weights) and one dense AdamW step runs. Prints one JSON."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    weight = next(model.parameters())
    accelerator.backward(model(torch.randn(4, 64, device=accelerator.device)).square().mean())
    optimizer.step()
    print(json.dumps({"distributed_type": str(accelerator.distributed_type),
                      "is_fsdp2": bool(getattr(accelerator, "is_fsdp2", False)), "weight": type(weight).__name__,
                      "placements": [str(p) for p in getattr(weight, "placements", ())]}))


def fsdp2_accelerate_row(device: str) -> Row:
    """accelerate's FSDP2 at world size 1, in a child process with the launcher's environment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "LOCAL_RANK": "0", "RANK": "0",
           "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    done = subprocess.run([sys.executable, __file__, "--fsdp2-accelerate-worker"], env=env, capture_output=True,
                          text=True, timeout=300)
    if done.returncode != 0:
        return Row("fsdp2 accelerate", "fail", "-", (done.stderr.strip().splitlines() or ["no output"])[-1][:200])
    report = json.loads(done.stdout.strip().splitlines()[-1])
    note = (f"{report['distributed_type']}, is_fsdp2 {report['is_fsdp2']}, weight {report['weight']} "
            f"{report['placements']}; one dense AdamW step ran")
    if report["is_fsdp2"] and report["weight"] == "DTensor":
        return Row("fsdp2 accelerate", "pass", "1 rank", note)
    if device == "cpu":
        return Row("fsdp2 accelerate", "skip", "-", f"accelerate uses FSDP on GPUs only (docs/scale_out.md): {note}")
    return Row("fsdp2 accelerate", "fail", "-", note)


def fsdp2_trainer_row() -> Row:
    from smc_trainer.training.arguments import SparseTrainingArguments

    old = os.environ.get("ACCELERATE_USE_FSDP")
    os.environ["ACCELERATE_USE_FSDP"] = "true"
    try:
        with tempfile.TemporaryDirectory() as out:
            SparseTrainingArguments(output_dir=out, sparse_method="gmp", sparsity=0.5, use_cpu=True)
    except ValueError as err:
        reason = str(err).split(" (")[0]
        return Row("fsdp2 trainer", "skip", "-", f"SparseTrainer refuses sparse FSDP as documented in "
                   f"docs/scale_out.md ({reason})")
    finally:
        if old is None:
            del os.environ["ACCELERATE_USE_FSDP"]
        else:
            os.environ["ACCELERATE_USE_FSDP"] = old
    return Row("fsdp2 trainer", "fail", "-", "SparseTrainer accepted a sparse method under FSDP, which this check "
               "does not run: extend the fsdp2 rows to it")


# ---- one-shot SparseGPT at 7B widths ------------------------------------------------------------------


def sparsegpt_row(device: str, small: bool) -> Row:
    from transformers import LlamaConfig, LlamaForCausalLM

    from smc_trainer import find_targets
    from smc_trainer.engine.oneshot.sparsegpt import sparsegpt_prune_group
    from smc_trainer.training.calibration import HookCalibrator

    hidden, mlp, heads, samples, seq = (128, 344, 4, 8, 32) if small else (4096, 11008, 32, 128, 512)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=seq)
    model = LlamaForCausalLM(config).to(device).eval()
    ids = torch.randint(0, 1000, (samples, seq), generator=torch.Generator().manual_seed(1)).to(device)
    batches = [{"input_ids": ids[i:i + 8]} for i in range(0, samples, 8)]
    targets = find_targets(model, prune_embeddings=False, prune_heads=False)

    def prune(group, hessian):
        results = sparsegpt_prune_group([t.param.detach() for t in group], hessian, [t.numel // 2 for t in group])
        for t, (new, _) in zip(group, results):
            t.param.data.copy_(new)

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    HookCalibrator(model, lambda: iter(batches)).sequential(targets, prune)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (f"peak GPU memory (weights included) {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
            if device == "cuda"
            else f"peak RSS of the process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    exact = [t.name for t in targets if int(torch.count_nonzero(t.param)) != t.numel // 2]
    finite = all(bool(torch.isfinite(t.param).all()) for t in targets)
    ok = not exact and finite and len(targets) == 14
    return Row(f"sparsegpt {'small' if small else '7B'} widths", check(ok), f"{seconds:.1f} s",
               f"{peak}; hidden {hidden}, MLP {mlp}, {heads} heads, 2 blocks, {samples} x {seq} tokens; "
               f"{len(targets)} linears at exactly 50%: {not exact}")


# ---- the table --------------------------------------------------------------------------------------


def run_rows(device: str, small: bool) -> list[Row]:
    size, tokens = (512, 512) if small else (4096, 4096)
    rows: list[tuple[str, Callable[[], Row]]] = [
        ("amp bf16", lambda: amp_row("bf16", device)),
        ("amp fp16", lambda: amp_row("fp16", device)),
        ("2:4 speed", lambda: semi_structured_row(device, size, tokens)),
        ("fsdp2 masks", lambda: fsdp2_row(device)),
        ("fsdp2 accelerate", lambda: fsdp2_accelerate_row(device)),
        ("fsdp2 trainer", fsdp2_trainer_row),
        ("sparsegpt", lambda: sparsegpt_row(device, small)),
    ]
    out = []
    for name, fn in rows:
        try:
            out.append(fn())
        except Exception as err:  # a row that crashes fails with the reason; the others still run
            out.append(Row(name, "fail", "-", f"{type(err).__name__}: {str(err)[:200]}"))
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
    return out


def table(rows: list[Row]) -> str:
    cols = ("row", "status", "number", "note")
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    return "\n".join(lines + [f"| {r.row} | {r.status} | {r.number} | {r.note.replace('|', '/')} |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--small", action="store_true", help="small sizes (2:4 at 512, SparseGPT at hidden 128)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--fsdp2-accelerate-worker", action="store_true", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.fsdp2_accelerate_worker:
        fsdp2_accelerate_worker()
        return 0
    if ns.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda needs a CUDA GPU and this machine has none (torch {torch.__version__}); "
                     "run the CPU rows with --device cpu --small")
    started = time.perf_counter()
    rows = run_rows(ns.device, ns.small)
    print(table(rows))
    name = torch.cuda.get_device_name() if ns.device == "cuda" else "cpu"
    print(f"\n{name}, torch {torch.__version__}: {time.perf_counter() - started:.0f} s")
    if ns.json:
        Path(ns.json).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n", encoding="utf-8")
    return 1 if any(r.status == "fail" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
