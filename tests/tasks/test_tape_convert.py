"""`run_smc.py convert-tape`: TAPE's ProteinBert -> an HF BertModel folder + IUPAC tokenizer, checked against TAPE.

A tiny randomly initialised TAPE model is built with tape-proteins' own classes and saved with TAPE's
`save_pretrained` (config.json + pytorch_model.bin), like its pretrained "bert-base" files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertModel

from run_smc import main
from smc_trainer.tasks.protein.loading import load_model_and_tokenizer
from smc_trainer.tasks.protein.modeling import BertForThermostability
from smc_trainer.tasks.protein.tape_convert import IUPAC_VOCAB, RESIDUES, convert_tape
from smc_trainer.training.arguments import ModelArguments

tape = pytest.importorskip("tape")

LAYERS, MAX_RESIDUES = 2, 24
SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ", RESIDUES, "G", "XBZUOACDEFGHIKLMNPQRSTVWY" * 2]
SCOPE = {f"bert.encoder.layer.{i}.{m}.weight" for i in range(LAYERS) for m in (
    "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
    "intermediate.dense", "output.dense")}


def tiny_tape_config() -> tape.ProteinBertConfig:
    return tape.ProteinBertConfig(hidden_size=16, num_hidden_layers=LAYERS, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64)


def save_tape(model: torch.nn.Module, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tape_model() -> tape.ProteinBertModel:
    torch.manual_seed(0)
    model = tape.ProteinBertModel(tiny_tape_config()).eval()
    with torch.no_grad():  # TAPE initialises biases and LayerNorms to 0 / 1: make them random so the test sees them
        for name, param in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model


@pytest.fixture(scope="module")
def converted(tape_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tape")
    return Path(convert_tape(str(save_tape(tape_model, root / "tape")), str(root / "hf")))


def test_converted_folder_is_a_bert_model_with_tapes_config(converted, tape_model):
    assert sorted(p.name for p in converted.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                           "tokenizer_config.json"]
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertModel"] and config["pad_token_id"] == 0
    tape_config = tape_model.config
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps"):
        assert config[key] == getattr(tape_config, key), key
    weights = load_file(str(converted / "model.safetensors"))
    assert set(weights) == set(tape_model.state_dict())  # every tensor, pooler included, under the same name
    assert all(torch.equal(weights[n], t) for n, t in tape_model.state_dict().items())


def test_converted_model_computes_what_tapes_model_computes(converted, tape_model):
    hf = BertModel.from_pretrained(converted).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted)
    batch = tokenizer(SEQUENCES, padding=True, return_tensors="pt")
    assert int((batch["attention_mask"] == 0).sum()) > 0  # padding is part of what is compared
    with torch.no_grad():
        sequence_output, pooled_output = tape_model(batch["input_ids"], input_mask=batch["attention_mask"])[:2]
        ours = hf(**batch)
    real = batch["attention_mask"].bool()
    assert sequence_output.abs().max() > 0.5  # a real signal, not an all-zero pair of outputs
    torch.testing.assert_close(ours.last_hidden_state[real], sequence_output[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.pooler_output, pooled_output, atol=1e-5, rtol=0)


def test_masked_lm_checkpoint_drops_the_head_and_the_bert_prefix(tape_model, tmp_path):
    """TAPE's pretrained file is a ProteinBertForMaskedLM state dict: `bert.` + `mlm.` names."""
    lm = tape.ProteinBertForMaskedLM(tiny_tape_config())
    lm.bert.load_state_dict(tape_model.state_dict())
    assert any(n.startswith("mlm.") for n in lm.state_dict())
    dest = convert_tape(str(save_tape(lm, tmp_path / "tape")), str(tmp_path / "hf"))
    weights = load_file(str(Path(dest) / "model.safetensors"))
    assert set(weights) == set(tape_model.state_dict())
    assert all(torch.equal(weights[n], t) for n, t in tape_model.state_dict().items())


def test_tokenizer_gives_tapes_ids_and_unknown_letters_become_unk(converted):
    ours, theirs = AutoTokenizer.from_pretrained(converted), tape.TAPETokenizer(vocab="iupac")
    assert dict(IUPAC_VOCAB) == dict(tape.tokenizers.IUPAC_VOCAB)
    rng = random.Random(0)
    sequences = SEQUENCES + ["".join(rng.choice(RESIDUES) for _ in range(rng.randint(1, 60))) for _ in range(20)]
    for seq in sequences:
        assert ours(seq)["input_ids"] == theirs.encode(seq).tolist(), seq
    unk = IUPAC_VOCAB["<unk>"]
    assert ours("MJ*a")["input_ids"] == [2, IUPAC_VOCAB["M"], unk, unk, unk, 3]
    with pytest.raises(KeyError):  # the one difference: TAPE refuses a letter outside its vocabulary
        theirs.encode("MJ")
    padded = ours(["MK", "MKTA"], padding=True)
    assert padded["input_ids"][0] == [2, 16, 14, 3, 0, 0] and padded["attention_mask"][0] == [1, 1, 1, 1, 0, 0]
    assert (ours.pad_token_id, ours.mask_token_id, ours.cls_token_id, ours.sep_token_id, ours.unk_token_id) == (
        0, 1, 2, 3, 4)


def test_protein_loader_puts_the_converted_backbone_under_the_papers_head(converted, tape_model):
    from smc_trainer.tasks.protein.data import ProteinSettings
    from smc_trainer.training.arguments import DataArguments

    settings = ProteinSettings.from_args(DataArguments(protein_labels="cold,hot", protein_max_residues=MAX_RESIDUES))
    model, tokenizer, source = load_model_and_tokenizer(ModelArguments(model_name_or_path=str(converted)), settings)
    assert type(model) is BertForThermostability and source.endswith("(pretrained)")
    assert model.config.pool_exclude_token_ids == [0, 1, 2, 3]
    for name, tensor in tape_model.state_dict().items():
        if not name.startswith("pooler."):
            assert torch.equal(model.state_dict()[f"bert.{name}"], tensor), name
    assert not any(n.startswith("bert.pooler") for n in model.state_dict())


def test_convert_errors_name_the_problem_before_writing(tape_model, tmp_path, capsys):
    src = save_tape(tape_model, tmp_path / "tape")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("mine")
    with pytest.raises(FileExistsError, match="DEST .*busy' exists and is not empty; .* --overwrite"):
        main(["convert-tape", str(src), str(tmp_path / "busy")])
    with pytest.raises(FileNotFoundError, match="lacks config.json and pytorch_model.bin"):
        main(["convert-tape", str(tmp_path / "busy"), str(tmp_path / "out")])
    config = json.loads((src / "config.json").read_text())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({**config, "vocab_size": 26}))
    (tmp_path / "other" / "pytorch_model.bin").write_bytes((src / "pytorch_model.bin").read_bytes())
    with pytest.raises(ValueError, match="vocab_size 26 is not the 30 tokens of TAPE's IUPAC vocabulary"):
        main(["convert-tape", str(tmp_path / "other"), str(tmp_path / "out")])
    (tmp_path / "other" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match=r"missing \['encoder.layer.2.attention.output.LayerNorm.bias'"):
        main(["convert-tape", str(tmp_path / "other"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    assert main(["convert-tape", str(src), str(tmp_path / "busy"), "--overwrite"]) == {"converted": 1.0}
    assert (tmp_path / "busy" / "model.safetensors").is_file()


def write_csv(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = [(("".join(rng.choice("AGSTL" if i % 2 else "KERDQ") for _ in range(rng.randint(6, 30)))),
             "hot" if i % 2 else "cold") for i in range(n)]
    path.write_text("sequence,label\n" + "".join(f"{s},{y}\n" for s, y in rows))
    return path


@pytest.mark.parametrize(("method", "sparsity"), [("omp_before", 0.5), ("gmp", 0.36)])
def test_converted_tape_model_trains_sparse_through_a_protein_recipe(converted, tmp_path, method, sparsity):
    out = tmp_path / method
    metrics = main(["--recipe", "hp_s2c2", "--sparse_method", method, "--sparsity", str(sparsity),
                    "--model_name_or_path", str(converted), "--output_dir", str(out),
                    "--dense_cache_dir", str(tmp_path / "cache"), "--report_to", "none", "--use_cpu",
                    "--disable_tqdm", "true", "--log_level", "warning", "--protein_max_residues", str(MAX_RESIDUES),
                    "--max_steps", "8", "--learning_rate", "1e-3", "--prune_frequency", "2",
                    "--train_file", str(write_csv(tmp_path / "train.csv", 16, 0)),
                    "--validation_file", str(write_csv(tmp_path / "validation.csv", 6, 1))])
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    masks = load_file(str(out / "sparse_masks.safetensors"))
    assert set(masks) == SCOPE
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round((1 - sparsity) * total)
    weights = load_file(str(out / "model.safetensors"))
    for name, mask in masks.items():
        assert int((weights[name] == 0).sum()) == int((~mask).sum()), name  # pruned: exactly zero, kept: trained
    assert metrics["sparsity/overall"] == pytest.approx(sparsity, abs=1e-3)
    again = BertForThermostability.from_pretrained(out)
    assert torch.equal(again.state_dict()[sorted(SCOPE)[0]], weights[sorted(SCOPE)[0]])
