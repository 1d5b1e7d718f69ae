"""2:4 semi-structured linears (torch.sparse.to_sparse_semi_structured) against dense, on a GPU.

RoBERTa-large shapes (hidden 1024, FFN 4096), float16: one linear on `--tokens` tokens, and a whole
RobertaModel-large-shaped forward (random weights, every encoder linear 2:4 by magnitude) converted with
`smc_trainer.release.semi_structured.to_semi_structured`. Needs CUDA compute capability >= 8.0; elsewhere it
prints the reason and exits with status 2.

    python -m benchmarks.bench_semi_structured --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

from smc_trainer.engine.patterns import NMPattern, nm_keep_mask
from smc_trainer.release.semi_structured import semi_structured_unavailable, to_semi_structured

SHAPES = {"qkv/o (1024x1024)": (1024, 1024), "ffn in (4096x1024)": (4096, 1024), "ffn out (1024x4096)": (1024, 4096)}


def timed(fn, device: torch.device, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def two_four_(linear: nn.Linear) -> None:
    with torch.no_grad():
        linear.weight.mul_(nm_keep_mask(linear.weight.abs(), NMPattern(2, 4)))


@torch.no_grad()
def linears(device: torch.device, tokens: int, repeats: int) -> None:
    print(f"\n## one linear, {tokens} tokens, float16\n\n| shape | dense ms | 2:4 ms | speed-up |\n|---|---|---|---|")
    for label, (out_f, in_f) in SHAPES.items():
        dense = nn.Linear(in_f, out_f).half().to(device)
        two_four_(dense)
        x = torch.randn(tokens, in_f, dtype=torch.float16, device=device)
        sparse = nn.Sequential(nn.Linear(in_f, out_f).half().to(device))
        sparse[0].load_state_dict(dense.state_dict())
        to_semi_structured(sparse)
        t_dense = timed(lambda: dense(x), device, repeats)  # noqa: B023
        t_sparse = timed(lambda: sparse(x), device, repeats)  # noqa: B023
        err = float((sparse(x) - dense(x)).abs().max())
        print(f"| {label} | {t_dense * 1e3:.3f} | {t_sparse * 1e3:.3f} | {t_dense / t_sparse:.2f}x "
              f"(max diff {err:.1e}) |")


@torch.no_grad()
def whole_model(device: torch.device, batch: int, seq: int, repeats: int) -> None:
    from transformers import RobertaConfig, RobertaModel

    cfg = RobertaConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    model = RobertaModel(cfg).half().to(device).eval()
    for module in model.encoder.modules():
        if type(module) is nn.Linear:
            two_four_(module)
    ids = torch.randint(5, 50000, (batch, seq), device=device)
    t_dense = timed(lambda: model(input_ids=ids), device, repeats)
    reference = model(input_ids=ids).last_hidden_state
    converted = to_semi_structured(model)
    t_sparse = timed(lambda: model(input_ids=ids), device, repeats)
    err = float((model(input_ids=ids).last_hidden_state - reference).abs().max())
    print(f"\n## RoBERTa-large-shaped forward, batch {batch} x {seq}, float16\n")
    print(f"| dense ms | 2:4 ms | speed-up | linears converted | max diff |\n|---|---|---|---|---|\n"
          f"| {t_dense * 1e3:.1f} | {t_sparse * 1e3:.1f} | {t_dense / t_sparse:.2f}x | {len(converted)} | {err:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    reason = semi_structured_unavailable(device)
    if reason is not None:
        print(f"bench_semi_structured: {reason}", file=sys.stderr)
        raise SystemExit(2)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}")
    linears(device, args.tokens, args.repeats)
    whole_model(device, args.batch, args.seq, args.repeats)


if __name__ == "__main__":
    main()
