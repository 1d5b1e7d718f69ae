"""What the mask on a LoRA adapter costs per training step, measured so that a noisy machine cannot fake it.

    python benchmarks/bench_lora_overhead.py                                 # MiniLM and RoBERTa-large shapes
    python benchmarks/bench_lora_overhead.py --shapes roberta-large --layers 24 --rounds 5 --device cuda

All modes live in ONE process, on the same pruned base weights, the same adapters and the same batch, and
their steps are INTERLEAVED (round 1: plain, exact, straight-through, unfused; round 2: the same ...), so a
burst of load from other jobs hits every mode alike; each mode's time is its median over the rounds (on a
shared CPU, `--threads 1 --clock cpu` times the process's own CPU work, which the others' load does not inflate
the way it inflates wall time). A step is
forward, backward and an AdamW step over the trainable parameters (adapters and head), without the Trainer
around it, so only what the mask changes is measured. Modes (all LoRA rank 8 on every prunable linear of the
encoder, base pruned to 59% by global magnitude):

- `plain`:            peft's LoRA, no mask on the update (`--sparse_adapter false`), the baseline;
- `exact`:            the masked adapters (`--sparse_adapter`, default), fused into the base product;
- `straight_through`: the masked adapters with `--adapter_gradient straight_through`;
- `unfused`:          the masked adapters through peft's forward and `MaskedLowRank` (the pre-fusion cost).

The per-layer table times one adapted linear of each shape (forward + backward) the same interleaved way.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODES = ("plain", "exact", "straight_through", "unfused")


def build_base(shape: str, layers: int):
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    if shape == "minilm":
        return BertForSequenceClassification(BertConfig(
            vocab_size=30522, hidden_size=384, num_hidden_layers=layers or 6, num_attention_heads=12,
            intermediate_size=1536, max_position_embeddings=512, num_labels=2))
    return RobertaForSequenceClassification(RobertaConfig(
        vocab_size=50265, hidden_size=1024, num_hidden_layers=layers or 24, num_attention_heads=16,
        intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, num_labels=2))


FLAGS = dict(lora_alpha=None, lora_dropout=0.0, lora_target_modules=None, prune_embeddings=False, prune_heads=False,
             prune_include=None, prune_exclude=None, prune_modules=None)


def flags_for(mode: str, rank: int) -> SimpleNamespace:
    return SimpleNamespace(**{**FLAGS, "lora_r": rank, "lora_alpha": 2 * rank, "sparse_adapter": mode != "plain"})


def lora_model(base: torch.nn.Module, masks: dict[str, torch.Tensor], mode: str, rank: int) -> torch.nn.Module:
    """A LoRA model of `mode` over a deep copy of the pruned `base`, its adapters initialised identically."""
    from smc_trainer.engine.masks import MaskSet
    from smc_trainer.engine.sparsity import SparsityConfig
    from smc_trainer.training.adapters import bind_masks, wrap_with_lora

    flags = flags_for(mode, rank)
    torch.manual_seed(1)
    model = wrap_with_lora(copy.deepcopy(base), flags)
    for name, param in model.named_parameters():  # B = 0 would hide the update's cost behind nothing
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=1e-3)
    owner = MaskSet(SparsityConfig.from_flags(flags).targets(model))
    owner.set_masks(masks)
    bind_masks(model, owner, straight_through=mode == "straight_through")
    if mode == "unfused":
        for module in model.modules():
            if hasattr(module, "_fusable_adapter"):
                module._fusable_adapter = lambda *args, **kwargs: None  # benchmark only: peft's own forward
    model.owner = owner  # keep the masks alive
    return model


def global_magnitude_masks(model: torch.nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Keep-masks of the prunable weights (embeddings and head dense) by one global magnitude threshold; the
    weights are zeroed."""
    from smc_trainer.engine.sparsity import SparsityConfig

    weights = {t.name: t.param for t in SparsityConfig.from_flags(flags_for("exact", 8)).targets(model)}
    scores = torch.cat([p.detach().abs().flatten() for p in weights.values()])
    threshold = scores.kthvalue(int(sparsity * scores.numel())).values
    masks = {n: p.detach().abs() > threshold for n, p in weights.items()}
    with torch.no_grad():
        for n, p in weights.items():
            p.mul_(masks[n])
    return masks


CLOCK = time.perf_counter


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = CLOCK()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return CLOCK() - start


def model_steps(opts: argparse.Namespace, shape: str, device: torch.device) -> dict[str, float]:
    base = build_base(shape, opts.layers)
    masks = global_magnitude_masks(base, 0.59)
    models = {mode: lora_model(base, masks, mode, opts.rank).to(device) for mode in MODES}
    del base
    optimizers = {m: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
                  for m, model in models.items()}
    gen = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 30000, (opts.batch, opts.seq), generator=gen).to(device),
             "attention_mask": torch.ones(opts.batch, opts.seq, dtype=torch.long, device=device),
             "labels": torch.randint(0, 2, (opts.batch,), generator=gen).to(device)}

    def step(mode: str) -> None:
        model, optimizer = models[mode], optimizers[mode]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for mode in MODES:  # warm-up
        step(mode)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(opts.rounds):
        for mode in MODES:
            times[mode].append(timed(functools.partial(step, mode), device))
    return {m: statistics.median(t) for m, t in times.items()}


def layer_fns(x, w, a, b, mask, s: float) -> dict:
    """Forward of one adapted linear in each mode (the same tensors for all)."""
    from smc_trainer.training.adapters.layers import FusedMaskedLoraLinear, MaskedLowRank

    return {
        "plain": lambda: torch.nn.functional.linear(x, w) + (x @ a.T) @ b.T * s,
        "exact": lambda: FusedMaskedLoraLinear.apply(x, w, None, a, b, mask, s, False),
        "straight_through": lambda: FusedMaskedLoraLinear.apply(x, w, None, a, b, mask, s, True),
        "unfused": lambda: torch.nn.functional.linear(x, w) + MaskedLowRank.apply(x, a, b, mask, s),
    }


def layer_steps(opts: argparse.Namespace, shape: str, device: torch.device) -> list[dict]:
    """One adapted linear per distinct (in, out) shape of the model, forward + backward, interleaved."""
    hidden, ffn = (384, 1536) if shape == "minilm" else (1024, 4096)
    rows = []
    for fan_in, fan_out in ((hidden, hidden), (hidden, ffn), (ffn, hidden)):
        torch.manual_seed(0)
        tokens = opts.batch * opts.seq
        x = torch.randn(tokens, fan_in, device=device, requires_grad=True)
        mask = torch.rand(fan_out, fan_in, device=device) < 0.41
        w = torch.randn(fan_out, fan_in, device=device) * mask
        a = torch.randn(opts.rank, fan_in, device=device, requires_grad=True)
        b = torch.randn(fan_out, opts.rank, device=device, requires_grad=True)
        grad = torch.randn(tokens, fan_out, device=device)
        fns = layer_fns(x, w, a, b, mask, 2.0)
        times: dict[str, list[float]] = {m: [] for m in MODES}
        for i in range(opts.rounds * 4 + 1):
            for mode, fn in fns.items():
                t = timed(functools.partial(forward_backward, fn, grad), device)
                if i:
                    times[mode].append(t)
        rows.append({"shape": shape, "in": fan_in, "out": fan_out, "tokens": tokens,
                     **{m: statistics.median(t) for m, t in times.items()}})
    return rows


def forward_backward(fn, grad: torch.Tensor) -> None:
    fn().backward(grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="minilm,roberta-large")
    parser.add_argument("--layers", type=int, default=0, help="transformer layers (0: the model's own, 6 / 24)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (median taken)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast to bf16 (GPU runs)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the process's CPU time (time.process_time), which other jobs on a shared CPU do "
                             "not inflate; meaningful with --threads 1 on --device cpu")
    opts = parser.parse_args()
    if opts.clock == "cpu":
        if opts.device != "cpu":
            raise SystemExit("--clock cpu measures CPU work; GPU kernels run outside it: use --clock wall")
        global CLOCK
        CLOCK = time.process_time
    shapes = opts.shapes.split(",")
    bad = [s for s in shapes if s not in ("minilm", "roberta-large")]
    if bad:
        raise SystemExit(f"--shapes: unknown {bad}; choose from minilm, roberta-large")
    device = torch.device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {opts.device}: no CUDA device here")
    torch.set_num_threads(opts.threads)
    results = {"layers": [], "models": []}
    print("| shape | linear (in -> out), tokens | plain ms | exact ms | straight-through ms | unfused ms "
          "| exact / plain | straight-through / plain |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for shape in shapes:
        for r in layer_steps(opts, shape, device):
            results["layers"].append(r)
            ms = {m: r[m] * 1e3 for m in MODES}
            print(f"| {shape} | {r['in']} -> {r['out']}, {r['tokens']} | {ms['plain']:.1f} | {ms['exact']:.1f} | "
                  f"{ms['straight_through']:.1f} | {ms['unfused']:.1f} | {r['exact'] / r['plain']:.3f} | "
                  f"{r['straight_through'] / r['plain']:.3f} |", flush=True)
    print("\n| shape | plain step ms | exact | straight-through | unfused | exact / plain | straight-through / plain "
          "| unfused / plain |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for shape in shapes:
        t = model_steps(opts, shape, device)
        results["models"].append({"shape": shape, **t})
        ms = {m: t[m] * 1e3 for m in MODES}
        ratio = {m: t[m] / t["plain"] for m in MODES}
        print(f"| {shape} | {ms['plain']:,.0f} | {ms['exact']:,.0f} | {ms['straight_through']:,.0f} | "
              f"{ms['unfused']:,.0f} | **{ratio['exact']:.3f}** | **{ratio['straight_through']:.3f}** | "
              f"{ratio['unfused']:.3f} |", flush=True)
    print(json.dumps({"options": vars(opts), **results}))


if __name__ == "__main__":
    main()
