"""SparseGPT's calibration on a Llama-shaped decoder: cached block inputs against whole-model passes and against the
reference implementations' loop, in one run.

Three paths prune every decoder linear to 50% (uniform, `lm_head` and embeddings dense, as the Wanda and SparseGPT
papers) on the same random weights and random calibration tokens:

- `whole-model`: `HookCalibrator(cache_inputs=False)`, passes that stop after each block (L (L + 1) / 2 layer
  calls per batch, plus L for the one-batch pass that finds the blocks' forward order);
- `cached`: `HookCalibrator` as the trainer runs it (one run to layer 0, then each layer twice: 2 L + 1 calls per
  batch, plus the same L of the order pass);
- `reference`: the loop of the SparseGPT and Wanda reference code, re-implemented here on our `sparsegpt_prune`:
  capture layer 0's inputs, then per layer hooks that add X X^T for every linear, prune each, run the layer again
  for the next layer's inputs (2 L + 1 calls per batch).

Each path runs in its own process, so its peak RSS (VmHWM) minus the RSS after the model is built is the memory
above the weights. Reported: seconds, calls into the decoder layers, peak memory above the weights, and whether
the pruned weights of the three paths are identical.

    PYTHONPATH=. python benchmarks/bench_llm_calibration.py                 # 7B widths, 2 layers, 128 x 512 tokens
    PYTHONPATH=. python benchmarks/bench_llm_calibration.py --hidden 1024 --intermediate 2752 --heads 8 \\
        --layers 4 --samples 32 --seq 128                                   # a 2-core CPU in about a minute
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import time

import torch

from benchmarks.bench_oneshot import peak_mb, reset_peak
from smc_trainer.engine.oneshot.sparsegpt import sparsegpt_prune, sparsegpt_prune_group
from smc_trainer.engine.targets import find_targets
from smc_trainer.training.calibration import HookCalibrator

PATHS = ("whole-model", "cached", "reference")


def build(a: argparse.Namespace):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                         num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
                         max_position_embeddings=max(2048, a.seq))
    model = LlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, a.vocab, (a.samples, a.seq), generator=gen)
    batches = [{"input_ids": ids[i:i + a.batch]} for i in range(0, a.samples, a.batch)]
    return model, batches


def prune_with(model, batches, path: str) -> None:
    targets = find_targets(model, prune_embeddings=False, prune_heads=False)

    def prune(group, hessian):  # as the sparsegpt criterion: one factor for the linears that share an input
        results = sparsegpt_prune_group([t.param.detach() for t in group], hessian, [t.numel // 2 for t in group])
        for t, (new, _) in zip(group, results, strict=True):
            t.param.data.copy_(new)

    if path == "reference":
        reference_loop(model, batches, targets)
    else:
        HookCalibrator(model, lambda: iter(batches), cache_inputs=path == "cached").sequential(targets, prune)


class _Stop(Exception):
    pass


@torch.no_grad()
def reference_loop(model, batches, targets) -> None:
    """The references' algorithm: layer 0's inputs cached, each layer calibrated with every linear hooked at once,
    pruned, and run again on the cached inputs for the next layer's."""
    layers = model.model.layers
    cached = []

    def capture(module, args, kwargs):
        cached.append((args[0] if args else kwargs["hidden_states"], {k: v for k, v in kwargs.items()
                                                                       if k != "hidden_states"}))
        raise _Stop

    handle = layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    for b in batches:
        with contextlib.suppress(_Stop):
            model(**b, use_cache=False)
    handle.remove()
    by_layer: dict[int, list] = {}
    for t in targets:
        by_layer.setdefault(int(t.name.split(".")[2]), []).append(t)
    for index, layer in enumerate(layers):
        linears = {t.name: (model.get_submodule(t.name.rsplit(".", 1)[0]), t) for t in by_layer.get(index, [])}
        hessians = {name: torch.zeros(t.param.shape[1], t.param.shape[1]) for name, (_, t) in linears.items()}
        handles = []
        for name, (module, _) in linears.items():
            def add(m, inp, h=hessians[name]):
                x = inp[0].reshape(-1, inp[0].shape[-1]).float()
                h.addmm_(x.t(), x)
            handles.append(module.register_forward_pre_hook(add))
        for hidden, kwargs in cached:
            layer(hidden, **kwargs)
        for h in handles:
            h.remove()
        for name, (_, t) in linears.items():
            new, _ = sparsegpt_prune(t.param.detach(), hessians.pop(name), keep=t.numel // 2)
            t.param.data.copy_(new)
        outs = []
        for hidden, kwargs in cached:
            out = layer(hidden, **kwargs)
            outs.append((out[0] if isinstance(out, tuple) else out, kwargs))
        cached = outs


def run_path(a: argparse.Namespace, path: str, queue) -> None:
    torch.set_num_threads(a.threads)
    model, batches = build(a)
    calls = [0]
    for layer in model.model.layers:
        layer.register_forward_pre_hook(lambda m, args: calls.__setitem__(0, calls[0] + 1))
    reset_peak()
    base = peak_mb()
    start = time.perf_counter()
    prune_with(model, batches, path)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256()
    for t in find_targets(model, prune_embeddings=False, prune_heads=False):
        digest.update(t.param.detach().numpy().tobytes())
    queue.put({"path": path, "seconds": seconds, "layer_calls": calls[0], "peak_above_weights_MB": peak_mb() - base,
               "digest": digest.hexdigest()[:16]})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args()
    ctx = multiprocessing.get_context("spawn")
    rows = []
    load_start = os.getloadavg()[0]
    for path in PATHS:
        queue = ctx.Queue()
        proc = ctx.Process(target=run_path, args=(a, path, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
        print(json.dumps(rows[-1]), flush=True)  # as each path ends: a run cut short keeps what it measured
    ref = next(r for r in rows if r["path"] == "reference")
    widths = f"hidden {a.hidden}, MLP {a.intermediate}, {a.heads} heads, {a.layers} layers"
    print(f"Llama-shaped decoder ({widths}); {a.samples} x {a.seq} tokens; {a.threads} threads; load average "
          f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print("| path | seconds | vs reference | layer calls | peak above weights (MB) | weights digest |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['path']} | {r['seconds']:.1f} | {r['seconds'] / ref['seconds']:.2f}x | {r['layer_calls']} | "
              f"{r['peak_above_weights_MB']:.0f} | `{r['digest']}` |")
    print("identical pruned weights:", len({r["digest"] for r in rows}) == 1)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(a), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
