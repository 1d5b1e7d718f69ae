"""LoRA sparse fine-tune vs full sparse fine-tune: trainable parameters, peak training memory, step time.

    python benchmarks/bench_lora.py                                   # MiniLM and RoBERTa-large shapes, CPU
    python benchmarks/bench_lora.py --shapes minilm --steps 6 --device cuda

Every (shape, mode) runs in its own process, so the peak memory of one cannot hide in another's: on CPU the
peak is the process's maximum resident set (`ru_maxrss`) minus the resident set just before the model is
built (libraries and data are not counted; the model, gradients, optimizer state, masks and activations
are); on CUDA it is `torch.cuda.max_memory_allocated`. Modes, all `omp_before` at sparsity 0.59 with AdamW:

- `full`:        full sparse fine-tuning (`--peft none`);
- `lora`:        `--peft lora` with the masked adapters (the default, `--sparse_adapter true`);
- `lora_plain`:  `--peft lora --sparse_adapter false`, plain LoRA: the step the mask's overhead is measured
                 against (same model, same adapters, no mask on the update);
- `lora_unfused`: the masked adapters with the fused product switched off (peft's base-layer product, then
                 `MaskedLowRank`), what `lora` cost before `FusedMaskedLoraLinear`; kept to show what fusing buys;
- `lora_ste`:    the masked adapters with `--adapter_gradient straight_through` (masked forward and merge, the
                 unmasked update's low-rank gradient).

Shapes: `minilm` (6 layers, hidden 384, FFN 1536, vocab 30522) and `roberta-large` (hidden 1024, 16 heads,
FFN 4096, vocab 50265, `--roberta_layers` of RoBERTa-large's 24 layers, default 4 on CPU), random weights.
Ratios are taken between modes of the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODES = {
    "full": {},
    "lora": {"peft": "lora"},
    "lora_plain": {"peft": "lora", "sparse_adapter": False},
    "lora_unfused": {"peft": "lora"},
    "lora_ste": {"peft": "lora", "adapter_gradient": "straight_through"},
}
SHAPES = ("minilm", "roberta-large")


def build_model(shape: str, layers: int):
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    if shape == "minilm":
        cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536, max_position_embeddings=512, num_labels=2)
        return BertForSequenceClassification(cfg)
    cfg = RobertaConfig(vocab_size=50265, hidden_size=1024, num_hidden_layers=layers, num_attention_heads=16,
                        intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                        num_labels=2)
    return RobertaForSequenceClassification(cfg)


def rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(opts: argparse.Namespace) -> dict:
    """One (shape, mode) measurement in this process."""
    import common
    from common import StepTimer, SyntheticBatches, clock, median, set_device

    from smc_trainer import SparseTrainer, SparseTrainingArguments

    if opts.mode == "lora_unfused":  # benchmark only: never take the fused path
        from smc_trainer.training.adapters.layers import SparseLoraLinear

        SparseLoraLinear._fusable_adapter = lambda self, args, kwargs: None
    device = set_device(opts.device)
    torch.set_num_threads(opts.threads)
    common.BATCH = opts.batch
    steps = opts.warmup + opts.steps
    data = SyntheticBatches(opts.batch * steps)
    if opts.shape == "roberta-large":  # token ids inside RoBERTa's vocabulary either way (1000..30521)
        data.ids = data.ids.clamp(max=50264)
    with tempfile.TemporaryDirectory() as out:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        else:
            before = rss_bytes()
        model = build_model(opts.shape, opts.roberta_layers)
        args = SparseTrainingArguments(**common.common_args(out, steps, sparse_method="omp_before", sparsity=0.59,
                                                            lora_r=opts.lora_r if MODES[opts.mode] else 8,
                                                            **MODES[opts.mode]))
        timer = StepTimer()
        trainer = SparseTrainer(model=model, args=args, train_dataset=data, callbacks=[timer])
        started = clock()
        trainer.train()
        wall = clock() - started
        peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss_bytes()) - before
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        total = sum(t.numel for t in trainer.masks.targets)
        return {"shape": opts.shape, "mode": opts.mode, "trainable": trainable, "prunable": total,
                "parameters": sum(p.numel() for p in trainer.model.parameters()),
                "peak_bytes": peak, "step_s": median(timer.times[opts.warmup:]), "wall_s": wall,
                "sparsity": trainer.masks.sparsity()}


def run_child(shape: str, mode: str, opts: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--shape", shape, "--mode", mode,
           "--device", opts.device, "--batch", str(opts.batch), "--steps", str(opts.steps),
           "--warmup", str(opts.warmup), "--roberta_layers", str(opts.roberta_layers), "--lora_r", str(opts.lora_r),
           "--threads", str(opts.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{shape}/{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(results: list[dict], opts: argparse.Namespace) -> str:
    from common import md_table

    rows = []
    for shape in opts.shapes.split(","):
        by = {r["mode"]: r for r in results if r["shape"] == shape}
        full, lora, plain = by["full"], by["lora"], by["lora_plain"]
        for mode in MODES:
            if mode not in by:
                continue
            r = by[mode]
            rows.append([shape, mode, f"{r['trainable']:,}", f"{r['trainable'] / full['trainable']:.4f}",
                         f"{r['peak_bytes'] / 2**20:,.0f}", f"{r['peak_bytes'] / full['peak_bytes']:.3f}",
                         f"{r['step_s'] * 1000:,.0f}", f"{r['step_s'] / full['step_s']:.3f}"])
        rows.append([shape, "**mask overhead**", "", "", "", "", "",
                     f"lora / lora_plain = **{lora['step_s'] / plain['step_s']:.3f}**"])
        if "lora_ste" in by:
            rows.append([shape, "**mask overhead, straight-through**", "", "", "", "", "",
                         f"lora_ste / lora_plain = **{by['lora_ste']['step_s'] / plain['step_s']:.3f}**"])
        if "lora_unfused" in by:
            rows.append([shape, "**fusing**", "", "", "", "", "",
                         f"lora_unfused / lora_plain = {by['lora_unfused']['step_s'] / plain['step_s']:.3f}"])
    header = ["shape", "mode", "trainable params", "vs full", "peak MiB", "vs full", "step ms (median)", "vs full"]
    return md_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--roberta_layers", type=int, default=4)
    parser.add_argument("--lora_r", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES), help="which of " + ", ".join(MODES))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        print(json.dumps(child(opts)))
        return
    unknown = [s for s in opts.shapes.split(",") if s not in SHAPES]
    if unknown:
        raise SystemExit(f"--shapes: unknown {unknown}; choose from {', '.join(SHAPES)}")
    modes = opts.modes.split(",")
    bad = [m for m in modes if m not in MODES] + [m for m in ("full", "lora", "lora_plain") if m not in modes]
    if bad:
        raise SystemExit(f"--modes: {bad} unknown or missing; full, lora and lora_plain are needed, "
                         f"choose from {', '.join(MODES)}")
    results = [run_child(shape, mode, opts) for shape in opts.shapes.split(",") for mode in modes]
    print(report(results, opts))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
