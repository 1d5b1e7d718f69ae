"""Shared pieces of the training benchmarks: a MiniLM-sized BERT, synthetic batches, step timing."""

from __future__ import annotations

import statistics
import time

import torch
from transformers import BertConfig, BertForSequenceClassification, TrainerCallback, TrainingArguments

from smc_trainer import SparseTrainer, SparseTrainingArguments

BATCH, SEQ, VOCAB = 16, 128, 30522
DEVICE = torch.device("cpu")


def set_device(name: str) -> torch.device:
    """Run the training benchmarks on `name` ("cpu", "cuda", "cuda:1"); a missing device is refused up front."""
    global DEVICE
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: torch.cuda.is_available() is False on this machine")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu or cuda[:N]; got {name!r}")
    DEVICE = device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def clock() -> float:
    """perf_counter after the device's queued work is done (GPU kernels run asynchronously)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return time.perf_counter()


def device_label() -> str:
    return torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu"


def minilm(seed: int = 0) -> BertForSequenceClassification:
    """BERT with MiniLM's shapes (6 layers, hidden 384, 12 heads, FFN 1536, vocab 30522), random init."""
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512, num_labels=2)
    return BertForSequenceClassification(cfg)


class SyntheticBatches(torch.utils.data.Dataset):
    """`n` random token sequences of length SEQ with random binary labels (deterministic from `seed`)."""

    def __init__(self, n: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1000, VOCAB, (n, SEQ), generator=gen)
        self.labels = torch.randint(0, 2, (n,), generator=gen)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long),
                "labels": self.labels[i]}


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step: from on_step_begin to on_step_end."""

    def __init__(self):
        self.times: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = clock()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(clock() - self._t0)


def common_args(output_dir: str, steps: int, **extra) -> dict:
    return dict(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=5e-5,
        weight_decay=0.01, report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True,
        use_cpu=DEVICE.type == "cpu", seed=0, dataloader_num_workers=0, **extra,
    )


def training_args(sparse: bool, output_dir: str, steps: int, **sparse_flags) -> TrainingArguments:
    """Plain TrainingArguments, or SparseTrainingArguments with `sparse_flags` (same training settings)."""
    if sparse:
        return SparseTrainingArguments(**common_args(output_dir, steps, **sparse_flags))
    return TrainingArguments(**common_args(output_dir, steps))


def make_sparse_trainer(output_dir: str, steps: int, callbacks=(), **sparse_flags) -> SparseTrainer:
    args = training_args(True, output_dir, steps, **sparse_flags)
    return SparseTrainer(model=minilm(), args=args, train_dataset=SyntheticBatches(BATCH * steps),
                         callbacks=list(callbacks))


def median(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
