"""Protein thermostability: data formats, the ESM head, both learning-rate groups, pruning scope, Table 1, recipes,
and the BERT backbone (a tiny HF BertModel with TAPE's IUPAC tokenizer; TAPE itself is in test_tape_convert.py).

Everything runs offline on a tiny ESM (hidden 16, 2 layers) saved to tmp as an `EsmForMaskedLM` with an
`EsmTokenizer` built from a vocab file written here, like a real Hub checkpoint.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    EsmConfig,
    EsmForMaskedLM,
    EsmTokenizer,
    EvalPrediction,
    GPT2Config,
)

from run_smc import main
from smc_trainer.engine.masks import MaskSet
from smc_trainer.engine.module_groups import TABLE1_GROUPS, module_group_regex, parse_module_group
from smc_trainer.engine.sparsity import SparsityConfig
from smc_trainer.engine.targets import find_targets
from smc_trainer.errors import UsageError
from smc_trainer.methods import get_method_class
from smc_trainer.methods.base import SparseContext
from smc_trainer.runs.ledger import Ledger
from smc_trainer.runs.recipes import load_recipe
from smc_trainer.runs.sweep import make_plan
from smc_trainer.tasks.protein import build, compute_accuracy, trainer_kwargs
from smc_trainer.tasks.protein.data import ProteinSettings, crop, read_fasta, split_files, to_canonical
from smc_trainer.tasks.protein.loading import NOT_COPIED, load_model_and_tokenizer, thermostability_config
from smc_trainer.tasks.protein.modeling import (
    BertForThermostability,
    EsmForThermostability,
    EsmThermostabilityConfig,
    masked_mean,
    residue_mask,
)
from smc_trainer.tasks.protein.tape_convert import IUPAC_VOCAB, iupac_tokenizer
from smc_trainer.training.arguments import DataArguments, ModelArguments, ProteinArguments, SparseTrainingArguments
from smc_trainer.training.trainer import SparseTrainer

ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N",
             "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>"]
MAX_RESIDUES = 24  # the tiny model has 40 positions; sequences up to 30 residues are generated, so some are cropped
LAYERS = 2
PROTEIN_RECIPES = ("hp_s", "hp_s2c2", "hp_s2c5", "meltome")
# per class: the residues a synthetic sequence is mostly made of (learnable, but the tests do not rely on it)
ALPHABETS = ["AGSTL", "KERDQ", "IVFMW", "NHYPC", "LKVEA"]


def tiny_esm_config() -> EsmConfig:
    return EsmConfig(vocab_size=len(ESM_VOCAB), hidden_size=16, num_hidden_layers=LAYERS, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=40, pad_token_id=1, mask_token_id=32,
                     position_embedding_type="absolute", token_dropout=True, hidden_dropout_prob=0.1,
                     attention_probs_dropout_prob=0.1)


@pytest.fixture(scope="module")
def esm_dir(tmp_path_factory) -> Path:
    """A tiny pretrained-looking ESM checkpoint folder: EsmForMaskedLM weights + config + EsmTokenizer files."""
    folder = tmp_path_factory.mktemp("tiny-esm")
    (folder / "vocab.txt").write_text("\n".join(ESM_VOCAB) + "\n", encoding="utf-8")
    EsmTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    EsmForMaskedLM(tiny_esm_config()).save_pretrained(folder)
    return folder


def tokenizer_of(folder: Path) -> EsmTokenizer:
    return EsmTokenizer.from_pretrained(folder)


def tiny_model(num_labels: int = 2, seed: int = 0) -> EsmForThermostability:
    torch.manual_seed(seed)
    values = {k: v for k, v in tiny_esm_config().to_dict().items() if k not in NOT_COPIED}
    config = EsmThermostabilityConfig(**values, num_labels=num_labels)
    return EsmForThermostability(config)


def synthetic_rows(n: int, labels: list[str], seed: int) -> list[tuple[str, str]]:
    """(sequence, class name) pairs; every 5th sequence is longer than MAX_RESIDUES."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        c = i % len(labels)
        length = rng.randint(MAX_RESIDUES + 1, 30) if i % 5 == 4 else rng.randint(6, 16)
        seq = "".join(rng.choice(ALPHABETS[c]) if rng.random() < 0.8 else rng.choice("ACDEFGHIKLMNPQRSTVWY")
                      for _ in range(length))
        rows.append((seq, labels[c]))
    return rows


def write_split(path: Path, rows: list[tuple[str, str]], fmt: str, tm_of: dict[str, float] | None = None) -> Path:
    """Write rows as csv (sequence,label), tsv (seq<TAB>label as indices), fasta (label= headers) or csv-tm."""
    if fmt == "csv":
        path.write_text("id,sequence,label\n" + "".join(f"p{i},{s},{y.upper()}\n" for i, (s, y) in enumerate(rows)))
    elif fmt == "tsv":
        names = sorted({y for _, y in rows}, key=[y for _, y in rows].index)
        path.write_text("seq\tlabel\n" + "".join(f"{s}\t{names.index(y)}\n" for s, y in rows))
    elif fmt == "fasta":
        path.write_text("".join(f">p{i}|label={y} organism=x\n{s[:10]}\n{s[10:]}\n" for i, (s, y) in enumerate(rows)))
    elif fmt == "csv-tm":
        path.write_text("real_seq,tm\n" + "".join(f"{s},{tm_of[y]}\n" for s, y in rows))
    return path


# ---- data format -------------------------------------------------------------------------------------


def settings(labels: str = "cold,hot", bins: str | None = None, protein_dropout: float | None = None,
             **kw) -> ProteinSettings:
    return ProteinSettings.from_args(DataArguments(protein_labels=labels, protein_tm_bins=bins, **kw),
                                     ProteinArguments(protein_dropout=protein_dropout))


def test_fasta_headers_carry_labels_and_sequences_span_lines(tmp_path):
    path = tmp_path / "x.fasta"
    path.write_text("; comment\n>a label=Hot\nmkt ay\nIAK\n>b|label=0|tm=12.5\nMKV\n")
    raw = read_fasta(str(path))
    assert raw["id"] == ["a", "b"] and raw["sequence"] == ["mkt ayIAK", "MKV"] and raw["tm"] == [None, "12.5"]
    canonical = to_canonical(raw, settings(), "x.fasta")
    assert canonical["sequence"] == ["MKTAYIAK", "MKV"] and canonical["label"] == [1, 0]


def test_labels_by_name_or_index_and_clear_errors():
    s = settings("cryophilic,psychrophilic,mesophilic")
    ok = to_canonical(Dataset.from_dict({"Sequence": ["AA", "CC", "DD"], "label": ["MESOphilic", "0", "1.0"]}), s, "f")
    assert ok["label"] == [2, 0, 1] and ok.features["label"].names == ["cryophilic", "psychrophilic", "mesophilic"]
    with pytest.raises(ValueError, match=r"f, row 1: label 'thermo' is neither a class name .* nor an index in \[0, 3"):
        to_canonical(Dataset.from_dict({"sequence": ["AA"], "label": ["thermo"]}), s, "f")
    with pytest.raises(ValueError, match=r"f, row 1: label 3 is neither"):
        to_canonical(Dataset.from_dict({"sequence": ["AA"], "label": [3]}), s, "f")
    with pytest.raises(ValueError, match="expected a sequence column"):
        to_canonical(Dataset.from_dict({"protein": ["AA"], "label": [0]}), s, "f")
    with pytest.raises(ValueError, match="row 2: empty sequence"):
        to_canonical(Dataset.from_dict({"sequence": ["AA", " "], "label": [0, 1]}), s, "f")


def test_melting_temperatures_are_binned_at_the_thresholds():
    s = settings("mesophilic,thermophilic,hyperthermophilic", "45,80")
    tms = [20.0, 44.99, 45.0, 79.9, 80.0, 95.0]
    binned = to_canonical(Dataset.from_dict({"sequence": ["A"] * 6, "melting_temperature": tms}), s, "m")
    assert binned["label"] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="no label column; pass --protein_tm_bins"):
        to_canonical(Dataset.from_dict({"sequence": ["A"], "tm": [50.0]}), settings("a,b,c"), "m")


@pytest.mark.parametrize(("flags", "message"), [
    ({"protein_labels": None}, "--protein_labels is required"),
    ({"protein_labels": "hot,hot"}, "at least 2 distinct"),
    ({"protein_tm_bins": "80,45"}, "--protein_tm_bins must be 1 ascending thresholds"),
    ({"protein_tm_bins": "45,x"}, "--protein_tm_bins must be comma-separated numbers"),
    ({"protein_max_residues": 0}, "--protein_max_residues must be >= 1; got 0"),
])
def test_bad_protein_flags_fail_naming_the_flag(flags, message):
    with pytest.raises(ValueError, match=message):
        ProteinSettings.from_args(DataArguments(**{"protein_labels": "cold,hot", **flags}))


@pytest.mark.parametrize(("flags", "message"), [
    ({"protein_lr_schedule": "cosine"}, "--protein_lr_schedule must be one of one_cycle, trainer; got 'cosine'"),
    ({"protein_dropout": 1.5}, r"--protein_dropout must be in \[0, 1\); got 1.5"),
    ({"protein_head_learning_rate": 0.0}, "--protein_head_learning_rate must be > 0; got 0.0"),
])
def test_bad_protein_model_flags_are_refused_with_the_training_flags(flags, message):
    """The head and backbone settings are training flags (ProteinArguments): refused as the arguments are built."""
    with pytest.raises(UsageError, match=message):
        SparseTrainingArguments(output_dir="unused", report_to="none", **flags)


def test_data_dir_layout_and_missing_data_errors(tmp_path):
    (tmp_path / "train.fasta").write_text(">a label=hot\nMK\n")
    (tmp_path / "test.tsv").write_text("sequence\tlabel\nMK\thot\n")
    assert split_files(DataArguments(data_dir=str(tmp_path))) == {
        "train": str(tmp_path / "train.fasta"), "validation": None, "test": str(tmp_path / "test.tsv")}
    with pytest.raises(ValueError, match="pass --data_dir or --train_file/--validation_file/--test_file"):
        split_files(DataArguments())
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no train file"):
        split_files(DataArguments(data_dir=str(tmp_path / "empty")))
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        split_files(DataArguments(data_dir=str(tmp_path / "missing")))


def test_crop_keeps_the_first_residues_and_logs_the_count(esm_dir, caplog):
    data = Dataset.from_dict({"sequence": ["A" * 10, "MK" + "L" * 40, "G" * 24, "K" * 25], "label": [0, 1, 0, 1]})
    with caplog.at_level(logging.INFO):
        cropped = crop(data, 24, "train")
    assert "train: cropped 2 of 4 sequences longer than 24 residues (the longest has 42)" in caplog.text
    assert [len(s) for s in cropped["sequence"]] == [10, 24, 24, 24]
    assert cropped["sequence"][1] == "MK" + "L" * 22  # N-terminal residues kept
    caplog.clear()
    with caplog.at_level(logging.INFO):
        crop(data.select([0, 2]), 24, "test")
    assert "test: no sequence longer than 24 residues; nothing cropped" in caplog.text
    tokens = tokenizer_of(esm_dir)(cropped["sequence"][1])["input_ids"]
    assert len(tokens) == 24 + 2 and tokens[0] == 0 and tokens[-1] == 2 and tokens[1] == ESM_VOCAB.index("M")


# ---- the model ---------------------------------------------------------------------------------------


def test_pooling_skips_special_and_padding_tokens():
    ids = torch.tensor([[0, 5, 6, 3, 2, 1, 1], [0, 7, 2, 1, 1, 1, 1]])
    attention = (ids != 1).long()
    mask = residue_mask(ids, attention, [0, 1, 2, 32])
    assert mask.tolist() == [[False, True, True, True, False, False, False], [False, True] + [False] * 5]
    hidden = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)
    assert torch.equal(masked_mean(hidden, mask)[0], hidden[0, 1:4].mean(0))
    assert torch.equal(masked_mean(hidden, mask)[1], hidden[1, 1])


def test_head_architecture_and_padding_invariance(esm_dir):
    model = tiny_model(num_labels=3)
    head = model.head
    assert [type(m).__name__ for m in head.children()] == ["Linear", "LayerNorm", "ReLU", "Linear"]
    assert (head.dense.in_features, head.dense.out_features, head.out_proj.out_features) == (16, 512, 3)
    model.eval()
    tok = tokenizer_of(esm_dir)
    alone = model(**tok(["MKTAYIAK"], return_tensors="pt")).logits
    batch = model(**tok(["MKTAYIAK", "MKTAYIAKQRQISFVKSH"], padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(batch[0], alone[0], atol=1e-5, rtol=1e-5)  # pads and <eos> do not enter the mean


def test_forward_pools_the_final_layer_over_the_residues_only(esm_dir):
    """The head sees the mean of the last hidden states at the residue positions (not <cls>, <eos>, pads), and
    maps it through dense -> norm -> ReLU -> out_proj in that order."""
    model = tiny_model(num_labels=3).eval()
    batch = tokenizer_of(esm_dir)(["MKTAYIAK", "MKTAYIAKQRQISFVKSH"], padding=True, return_tensors="pt")
    seen: list[torch.Tensor] = []
    model.head.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        logits = model(**batch).logits
        hidden = model.esm(**batch).last_hidden_state
        expected = torch.stack([hidden[0, 1:9].mean(0), hidden[1, 1:19].mean(0)])  # <cls> at 0, <eos> after
        head = model.head
        by_hand = head.out_proj(torch.relu(head.norm(head.dense(expected))))
    torch.testing.assert_close(seen[0], expected)
    torch.testing.assert_close(logits, by_hand)


def test_esm2_style_rotary_checkpoint_loads_without_a_position_limit(tmp_path):
    """ESM-2 checkpoints (rotary positions, no embedding LayerNorm) load by --model_name_or_path like ESM-1b."""
    (tmp_path / "vocab.txt").write_text("\n".join(ESM_VOCAB) + "\n", encoding="utf-8")
    EsmTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    config = tiny_esm_config()
    config.position_embedding_type, config.emb_layer_norm_before = "rotary", False
    torch.manual_seed(0)
    EsmForMaskedLM(config).save_pretrained(tmp_path)
    model, tok, _ = load_model_and_tokenizer(ModelArguments(model_name_or_path=str(tmp_path)),
                                             settings(protein_max_residues=100))  # rotary: no learned-position cap
    pretrained = load_file(str(tmp_path / "model.safetensors"))
    name = "esm.encoder.layer.0.attention.self.query.weight"
    assert model.config.position_embedding_type == "rotary" and torch.equal(model.state_dict()[name], pretrained[name])
    assert model(**tok(["MKTAYIAK"], return_tensors="pt")).logits.shape == (1, 2)


def test_loads_esm_checkpoint_saves_and_reloads_through_auto_classes(esm_dir, tmp_path):
    model, tok, source = load_model_and_tokenizer(ModelArguments(model_name_or_path=str(esm_dir)),
                                                  settings("cold,hot", protein_dropout=0.0,
                                                           protein_max_residues=MAX_RESIDUES))
    assert source.endswith("(pretrained)") and model.config.id2label == {0: "cold", 1: "hot"}
    assert model.config.hidden_dropout_prob == 0.0 and model.config.attention_probs_dropout_prob == 0.0
    assert model.config.pool_exclude_token_ids == [0, 1, 2, 32]
    pretrained = load_file(str(esm_dir / "model.safetensors"))
    for name in ("esm.embeddings.word_embeddings.weight", "esm.encoder.layer.1.attention.self.query.weight"):
        assert torch.equal(model.state_dict()[name], pretrained[name]), name
    model.save_pretrained(tmp_path / "saved")
    # canonical names on disk (transformers would write the legacy LayerNorm.gamma/beta for ESM), so raw safetensors
    # readers (Trainer's best-checkpoint reload, the pipeline's dense cache) load the file too
    assert set(load_file(str(tmp_path / "saved" / "model.safetensors"))) == set(model.state_dict())
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert type(again) is EsmForThermostability and again.config.head_hidden_size == 512
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_offline_hub_error_names_the_checkpoint_and_the_local_flags(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    args = ModelArguments(model_name_or_path="facebook/esm1b_t33_650M_UR50S", cache_dir=str(tmp_path))
    with pytest.raises(OSError, match=r"(?s)'facebook/esm1b_t33_650M_UR50S'.*--model_name_or_path \(a local folder.*"
                                      r"--data_dir or --train_file/--validation_file/--test_file"):
        load_model_and_tokenizer(args, settings())


def test_too_many_residues_for_learned_positions_fail_early(esm_dir):
    with pytest.raises(ValueError, match="--protein_max_residues 40 exceeds .* pass at most 36"):
        load_model_and_tokenizer(ModelArguments(model_name_or_path=str(esm_dir)),
                                 settings(protein_max_residues=40))


# ---- optimizer: both groups step, OneCycle per optimizer step -----------------------------------------


def test_backbone_and_head_both_step_with_their_own_learning_rates(esm_dir, tmp_path):
    rows = synthetic_rows(12, ["cold", "hot"], seed=1)
    data = DataArguments(train_file=str(write_split(tmp_path / "train.csv", rows, "csv")), protein_labels="cold,hot",
                         protein_max_residues=MAX_RESIDUES)
    args = SparseTrainingArguments(output_dir=str(tmp_path / "out"), learning_rate=1e-3, weight_decay=0.01,
                                   protein_head_learning_rate=2e-2,
                                   max_steps=3, per_device_train_batch_size=4, report_to="none", use_cpu=True,
                                   save_strategy="no", eval_strategy="no", seed=0)
    bundle = build(ModelArguments(model_name_or_path=str(esm_dir)), data, args, recipe=None)
    model = bundle.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SparseTrainer(model=model, args=args, train_dataset=bundle.train_dataset,
                            data_collator=bundle.data_collator, **bundle.trainer_kwargs)
    trainer.train()

    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert [groups[n]["max_lr"] for n in ("backbone", "backbone_no_decay", "head", "head_no_decay")] == [
        1e-3, 1e-3, 2e-2, 2e-2]
    group_of = {id(p): g["name"] for g in trainer.optimizer.param_groups for p in g["params"]}
    placed = {n: group_of[id(p)] for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n, g in placed.items() if g.startswith("head")} == {n for n in placed if n.startswith("head.")}
    assert {n for n, g in placed.items() if g.startswith("backbone")} == {n for n in placed if n.startswith("esm.")}
    assert (placed["head.dense.weight"], placed["head.norm.weight"], placed["head.out_proj.bias"]) == (
        "head", "head_no_decay", "head_no_decay")
    assert (placed["esm.encoder.layer.0.attention.self.query.weight"], placed["esm.embeddings.word_embeddings.weight"],
            placed["esm.encoder.layer.0.attention.self.query.bias"]) == ("backbone", "backbone", "backbone_no_decay")
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0 and groups["head"]["weight_decay"] == 0.01
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n, p in model.named_parameters() if id(p) in in_optimizer} == trainable
    assert not any("contact_head" in n for n in trainable)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert {"head.dense.weight", "head.out_proj.weight", "head.norm.weight"} <= changed
    assert {"esm.encoder.layer.0.attention.self.query.weight", "esm.encoder.layer.1.output.dense.weight"} <= changed

    schedule = trainer.lr_scheduler
    assert isinstance(schedule, torch.optim.lr_scheduler.OneCycleLR) and schedule.total_steps == 3
    assert schedule.last_epoch == trainer.state.global_step == 3  # stepped per optimizer step, not per epoch
    for name, peak in (("backbone", 1e-3), ("head", 2e-2)):
        reference = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
        ref_schedule = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=peak, total_steps=3)
        for _ in range(3):
            reference.step()
            ref_schedule.step()
        assert groups[name]["lr"] == pytest.approx(reference.param_groups[0]["lr"], rel=1e-12), name


def test_trainer_schedule_option_and_head_lr_default():
    args = SparseTrainingArguments(output_dir="unused", learning_rate=3e-5, report_to="none",
                                   protein_lr_schedule="trainer")
    kwargs = trainer_kwargs(args)
    assert "lr_scheduler_factory" not in kwargs
    assert kwargs["optimizer_cls_and_kwargs"][1]["head_lr"] == kwargs["optimizer_cls_and_kwargs"][1]["backbone_lr"]


# ---- pruning scope and the Table 1 module groups -------------------------------------------------------


def prune(model: torch.nn.Module, method: str, sparsity: float, prune_modules: str | None) -> MaskSet:
    """Install `method`'s initial masks at `sparsity` with the recipe's scope flags (no training)."""
    recipe = load_recipe("hp_s2c2").args
    args = SparseTrainingArguments(output_dir="unused", report_to="none", sparse_method=method, sparsity=sparsity,
                                   prune_modules=prune_modules or recipe["prune_modules"], seed=0)
    masks = MaskSet(find_targets(model, modules=args.prune_modules))
    ctx = SparseContext(masks.targets, masks, SparsityConfig.from_flags(args), total_steps=10,
                        accumulate_gradients=lambda n: None)
    masks.set_masks(get_method_class(method).from_args(args).initial_masks(ctx))
    return masks


SCOPE = {f"esm.encoder.layer.{i}.{m}.weight" for i in range(LAYERS) for m in (
    "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
    "intermediate.dense", "output.dense")}


@pytest.mark.parametrize("method", ["omp_before", "random_before"])
@pytest.mark.parametrize("sparsity", [0.05, 0.5, 0.95])
def test_only_attention_and_ffn_weights_are_pruned(method, sparsity):
    model = tiny_model()
    with torch.no_grad():  # no exact zeros before pruning, so every zero afterwards is the method's
        model.esm.embeddings.word_embeddings.weight[1].fill_(0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = prune(model, method, sparsity, None)
    assert set(masks.masks) == SCOPE
    total = sum(before[n].numel() for n in SCOPE)
    assert masks.kept() == round((1 - sparsity) * total)
    for name, param in model.named_parameters():
        if name in SCOPE:
            assert int((param == 0).sum()) == int((~masks.masks[name]).sum()), name
        else:  # embeddings, norms, biases, contact head and the new head: bit-identical
            assert torch.equal(param.detach(), before[name]), name


QUERY, KEY, VALUE, OUT = "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"
TABLE1_MODULES = {  # the rows of the paper's Table 1, written out here (not derived from the code under test)
    "qkvo_ffn": (QUERY, KEY, VALUE, OUT, "intermediate.dense", "output.dense"),
    "qkv": (QUERY, KEY, VALUE),
    "qk": (QUERY, KEY),
    "qv": (QUERY, VALUE),
    "kv": (KEY, VALUE),
}


def group_names(group: str) -> set[str]:
    return {f"esm.encoder.layer.{i}.{m}.weight" for i in range(LAYERS) for m in TABLE1_MODULES[group]}


def test_table1_groups_are_the_papers_rows():
    assert tuple(TABLE1_MODULES) == TABLE1_GROUPS


@pytest.mark.parametrize("group", TABLE1_GROUPS)
def test_table1_groups_prune_exactly_the_named_modules_at_the_given_sparsity(group):
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = prune(model, "omp_before", 0.05, group)
    expected = group_names(group)
    assert set(masks.masks) == expected
    n_group = sum(before[n].numel() for n in expected)
    assert masks.kept() == round(0.95 * n_group)
    for name, param in model.named_parameters():
        if name not in expected:
            assert torch.equal(param.detach(), before[name]), name


def test_module_group_names_and_regex():
    assert parse_module_group("qkvo_ffn") == ("q", "k", "v", "o", "ffn")
    assert parse_module_group("VQ") == ("q", "v")
    assert re.search(module_group_regex("ffn"), "esm.encoder.layer.3.output.dense.weight")
    assert not re.search(module_group_regex("ffn"), "esm.encoder.layer.3.attention.output.dense.weight")
    assert not re.search(module_group_regex("o"), "esm.encoder.layer.3.output.dense.weight")
    with pytest.raises(ValueError, match=r"--prune_modules must combine the module kinds q, k, v, o, ffn .*got 'qx'"):
        SparseTrainingArguments(output_dir="unused", report_to="none", prune_modules="qx")


def test_module_groups_add_a_sweep_dimension_with_a_shared_dense_run():
    plan = make_plan(["hp_s2c2"], ["dense", "omp_after", "lth"], [0.2], [0], module_groups=list(TABLE1_GROUPS))
    singles = [j for j in plan.jobs if j.kind == "single"]
    assert [j.kind for j in plan.jobs].count("dense") == 1
    assert sorted(j.label for j in singles) == sorted(f"omp_after[{g}]" for g in TABLE1_GROUPS)
    assert len([j for j in plan.jobs if j.kind == "chain"]) == len(TABLE1_GROUPS)


# ---- end to end: every recipe, dense and one sparse method ---------------------------------------------


def tiny_flags(esm: Path, out: Path, files: dict[str, Path]) -> list[str]:
    flags = ["--model_name_or_path", str(esm), "--output_dir", str(out), "--dense_cache_dir", str(out.parent / "cache"),
             "--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--log_level", "warning",
             "--protein_max_residues", str(MAX_RESIDUES), "--num_train_epochs", "1", "--learning_rate", "1e-3",
             "--per_device_eval_batch_size", "16", "--prune_frequency", "2", "--snip_batches", "2"]
    for split, path in files.items():
        flags += [f"--{split}_file", str(path)]
    return flags


def recompute_accuracy(run_dir: Path, esm: Path, test_rows: list[tuple[str, str]], labels: list[str]) -> float:
    """Accuracy of the saved model on the test rows, computed here from scratch."""
    model = EsmForThermostability.from_pretrained(run_dir).eval()
    tok = tokenizer_of(esm)
    batch = tok([s[:MAX_RESIDUES] for s, _ in test_rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        predictions = model(**batch).logits.argmax(-1)
    return float((predictions == torch.tensor([labels.index(y) for _, y in test_rows])).float().mean())


CASES = [  # recipe, file format, sparse method, sparsity
    ("hp_s", "csv", "snip", 0.36),
    ("hp_s2c2", "fasta", "omp_after", 0.2),
    ("hp_s2c5", "tsv", "gmp", 0.5),
    ("meltome", "csv-tm", "random_before", 0.36),
]


@pytest.mark.parametrize(("recipe", "fmt", "method", "sparsity"), CASES, ids=[c[0] for c in CASES])
def test_protein_recipe_runs_end_to_end_dense_and_sparse(recipe, fmt, method, sparsity, esm_dir, tmp_path):
    labels = load_recipe(recipe).args["protein_labels"].split(",")
    tm_of = {"mesophilic": 40.0, "thermophilic": 60.0, "hyperthermophilic": 90.0}
    rows = {split: synthetic_rows(n, labels, seed) for split, n, seed in (("train", 30, 0), ("validation", 10, 1),
                                                                          ("test", 15, 2))}
    suffix = {"csv": "csv", "csv-tm": "csv", "tsv": "tsv", "fasta": "fasta"}[fmt]
    splits = ("train", "test") if recipe == "meltome" else ("train", "validation", "test")  # meltome: carved
    files = {s: write_split(tmp_path / f"{s}.{suffix}", rows[s], fmt, tm_of) for s in splits}

    dense = main(["--recipe", recipe, "--sparse_method", "dense", *tiny_flags(esm_dir, tmp_path / "dense", files)])
    sparse_dir = tmp_path / method
    sparse = main(["--recipe", recipe, "--sparse_method", method, "--sparsity", str(sparsity),
                   *tiny_flags(esm_dir, sparse_dir, files)])

    for metrics, run_dir in ((dense, tmp_path / "dense"), (sparse, sparse_dir)):
        assert 0.0 <= metrics["eval_accuracy"] <= 1.0
        assert metrics["test_accuracy"] == pytest.approx(recompute_accuracy(run_dir, esm_dir, rows["test"], labels))
        assert metrics["test_samples"] == 15
    assert dense["eval_samples"] == (3 if recipe == "meltome" else 10)  # 10% of 30 held out for validation
    masks = load_file(str(sparse_dir / "sparse_masks.safetensors"))
    assert set(masks) == SCOPE
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round((1 - sparsity) * total)
    assert sparse["sparsity/overall"] == pytest.approx(sparsity, abs=1e-3)
    report = json.loads((sparse_dir / "sparsity_report.json").read_text())
    assert report["method"] == method and report["prune_modules"] == "qkvo_ffn"


def test_table1_preset_is_one_sweep_with_a_row_per_module_group(esm_dir, tmp_path):
    rows = {s: synthetic_rows(n, ["cold", "hot"], seed) for s, n, seed in (("train", 18, 0), ("test", 8, 2))}
    for split, split_rows in rows.items():
        write_split(tmp_path / f"{split}.csv", split_rows, "csv")
    sweep_dir = tmp_path / "table1"
    flags = tiny_flags(esm_dir, tmp_path / "unused", {})
    flags = flags[flags.index("--report_to"):]  # the sweep names the outputs
    main(["sweep", "--recipes", "hp_s2c2", "--methods", "dense,omp_after", "--sparsities", "0.05",
          "--module_groups", "qkvo_ffn,qk,kv", "--sweep_dir", str(sweep_dir), "--data_dir", str(tmp_path),
          "--model_name_or_path", str(esm_dir), *flags])

    records = Ledger(str(sweep_dir / "ledger.jsonl")).records()
    by_group = {r["module_group"]: r for r in records if r["method"] == "omp_after"}
    assert sorted(by_group) == ["kv", "qk", "qkvo_ffn"] and len(records) == 4
    assert len({r["key"] for r in records}) == 4 and "hp_s2c2/omp_after[qk]/0.050000/" in by_group["qk"]["key"]
    for group, record in by_group.items():
        assert {layer["name"] for layer in record["layers"]} == group_names(group)
        total = sum(layer["total"] for layer in record["layers"])
        assert sum(layer["kept"] for layer in record["layers"]) == round(0.95 * total)
    table = (sweep_dir / "report" / "results.md").read_text()
    for label in ("dense", "omp_after [qkvo_ffn]", "omp_after [qk]", "omp_after [kv]"):
        assert f"| {label} |" in table, table
    csv_rows = (sweep_dir / "report" / "results.csv").read_text().splitlines()
    assert "module_group" in csv_rows[0].split(",") and sum(",qk," in row for row in csv_rows) == 1


def test_compute_accuracy_is_argmax_accuracy():
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 1.0]])
    assert compute_accuracy(EvalPrediction(predictions=logits, label_ids=np.array([1, 0, 0]))) == {
        "accuracy": pytest.approx(2 / 3)}


def test_recipes_carry_the_paper_settings():
    for name in PROTEIN_RECIPES:
        args = load_recipe(name).args
        assert load_recipe(name).task == "protein" and args["model_name_or_path"] == "facebook/esm1b_t33_650M_UR50S"
        assert (args["learning_rate"], args["protein_head_learning_rate"], args["weight_decay"]) == (1e-6, 2e-2, 0.01)
        assert args["num_train_epochs"] == 4 and args["protein_dropout"] == 0.0 and args["prune_modules"] == "qkvo_ffn"
        assert args["per_device_train_batch_size"] == (2 if name == "meltome" else 3)
        assert args["snip_batches"] == 101  # the official ESM-1B SNIP sums gradients over 101 batches
    assert len(load_recipe("hp_s").args["protein_labels"].split(",")) == 5
    assert load_recipe("hp_s2c2").args["protein_labels"] == "cold,hot"
    assert load_recipe("meltome").args["protein_tm_bins"] == "45,80"


# ---- the BERT backbone (TAPE's ProteinBert after `run_smc.py convert-tape`; tests/tasks/test_tape_convert.py) ------


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A tiny HF BertModel folder with TAPE's IUPAC tokenizer, the layout `convert-tape` writes."""
    folder = tmp_path_factory.mktemp("tiny-protein-bert")
    config = BertConfig(vocab_size=len(IUPAC_VOCAB), hidden_size=16, num_hidden_layers=LAYERS, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=40, pad_token_id=0)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    iupac_tokenizer(model_max_length=40).save_pretrained(folder)
    return folder


def test_bert_checkpoint_loads_under_the_head_and_saves_and_reloads(bert_dir, tmp_path):
    model, tok, source = load_model_and_tokenizer(ModelArguments(model_name_or_path=str(bert_dir)),
                                                  settings("cold,hot", protein_max_residues=MAX_RESIDUES))
    assert type(model) is BertForThermostability and source.endswith("(pretrained)")
    assert model.config.pool_exclude_token_ids == [0, 1, 2, 3]  # TAPE's <pad>, <mask>, <cls>, <sep>
    assert not any(n.startswith("bert.pooler.") for n in model.state_dict())  # the head reads the residue mean
    pretrained = load_file(str(bert_dir / "model.safetensors"))
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.1.attention.self.query.weight"):
        assert torch.equal(model.state_dict()[f"bert.{name}"], pretrained[name]), name
    batch = tok(["MKTAYIAK", "MKTAYIAKQRQISFVKSH"], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        hidden = model.bert(**batch).last_hidden_state
        expected = torch.stack([hidden[0, 1:9].mean(0), hidden[1, 1:19].mean(0)])  # <cls> at 0, <sep> after
        torch.testing.assert_close(model(**batch).logits, model.head(expected))
    model.save_pretrained(tmp_path / "saved")
    assert set(load_file(str(tmp_path / "saved" / "model.safetensors"))) == set(model.state_dict())
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert type(again) is BertForThermostability and again.config.pool_exclude_token_ids == [0, 1, 2, 3]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_bert_positions_cap_the_residues_and_other_model_types_are_refused(bert_dir):
    with pytest.raises(ValueError, match="--protein_max_residues 39 exceeds .* pass at most 38"):
        load_model_and_tokenizer(ModelArguments(model_name_or_path=str(bert_dir)), settings(protein_max_residues=39))
    tok = AutoTokenizer.from_pretrained(bert_dir)
    with pytest.raises(ValueError, match=r"must be an ESM checkpoint \(model_type esm or esm_thermostability\) or a "
                                         r"BERT one \(model_type bert or bert_thermostability.*got model_type 'gpt2'"):
        thermostability_config(GPT2Config(), tok, settings())


def test_bert_backbone_prunes_only_attention_and_ffn_weights(bert_dir):
    model, _, _ = load_model_and_tokenizer(ModelArguments(model_name_or_path=str(bert_dir)),
                                           settings(protein_max_residues=MAX_RESIDUES))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = prune(model, "omp_before", 0.5, None)
    scope = {n.replace("esm.", "bert.", 1) for n in SCOPE}
    assert set(masks.masks) == scope
    assert masks.kept() == round(0.5 * sum(before[n].numel() for n in scope))
    for name, param in model.named_parameters():
        if name in scope:
            assert int((param == 0).sum()) == int((~masks.masks[name]).sum()), name
        else:
            assert torch.equal(param.detach(), before[name]), name
