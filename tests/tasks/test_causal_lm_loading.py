"""`load_causal_lm` on a saved tiny model folder (no download): the dtype asked for, the same logits as the model
that was saved, a pad token where the tokenizer has none (and one INFO line saying so), a bad dtype refused before
anything loads; `is_causal_lm` from configs alone."""

from __future__ import annotations

import logging

import pytest
import torch
from llm_helpers import CAUSAL_ARCHS, byte_tokenizer, save_tiny_causal_lm, tiny_causal_lm
from tokenizers import Tokenizer
from transformers import (
    AutoConfig,
    BartConfig,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
    T5Config,
)

from smc_trainer.errors import UsageError
from smc_trainer.tasks.causal_lm.loading import is_causal_lm, load_causal_lm

IDS = torch.tensor([[5, 70, 80, 90, 100, 3]])


@pytest.mark.parametrize("dtype,expected", [("float32", torch.float32), ("bfloat16", torch.bfloat16),
                                            ("auto", torch.float32)])
def test_loads_in_the_dtype_asked_for(tmp_path, dtype, expected):
    folder = save_tiny_causal_lm(tmp_path / "llama", "llama")
    model, tokenizer = load_causal_lm(folder, torch_dtype=dtype)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert {p.dtype for p in model.parameters()} == {expected}
    assert tokenizer.pad_token == "<pad>" and model.config.pad_token_id == tokenizer.pad_token_id
    original = tiny_causal_lm("llama")
    params = dict(model.named_parameters())
    for name, value in original.named_parameters():  # the saved weights, cast exactly as .to(dtype) casts them
        assert torch.equal(params[name].detach(), value.detach().to(expected)), name
    with torch.no_grad():
        got, want = model(IDS).logits.float(), original(IDS).logits
    # float32 equals the saved model; bfloat16 keeps ~3 significant digits (8-bit mantissa) through 2 blocks
    assert torch.allclose(got, want, rtol=0, atol=0 if expected == torch.float32 else 0.05)


@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_every_tiny_arch_loads_as_saved(tmp_path, arch):
    model, _ = load_causal_lm(save_tiny_causal_lm(tmp_path / arch, arch), torch_dtype="float32")
    original = tiny_causal_lm(arch)
    assert type(model) is type(original)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values()))


def test_a_tokenizer_without_pad_pads_with_eos_and_says_so(tmp_path, caplog):
    folder = save_tiny_causal_lm(tmp_path / "gpt2", "gpt2")
    backend = Tokenizer.from_str(byte_tokenizer().backend_tokenizer.to_str())
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>").save_pretrained(folder)
    with caplog.at_level(logging.INFO, logger="smc_trainer"):
        model, tokenizer = load_causal_lm(folder)
    assert tokenizer.pad_token == "</s>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    lines = [r.getMessage() for r in caplog.records if "no pad token" in r.getMessage()]
    assert len(lines) == 1 and "'</s>'" in lines[0] and folder in lines[0]
    assert all(r.levelno == logging.INFO for r in caplog.records if "no pad token" in r.getMessage())


def test_a_bad_dtype_is_refused_with_the_valid_names_before_loading(tmp_path):
    with pytest.raises(UsageError) as err:
        load_causal_lm(str(tmp_path / "does-not-exist"), torch_dtype="fp16")
    message = str(err.value)
    assert "'fp16'" in message and all(name in message for name in ("auto", "bfloat16", "float16", "float32"))


def test_is_causal_lm_from_configs(tmp_path):
    folder = save_tiny_causal_lm(tmp_path / "opt", "opt")
    assert is_causal_lm(AutoConfig.from_pretrained(folder))  # architectures: ["OPTForCausalLM"]
    assert is_causal_lm(GPT2Config(architectures=["GPT2LMHeadModel"]))
    assert is_causal_lm(LlamaConfig()) and is_causal_lm(GPT2Config())  # no architectures: by model_type
    assert not is_causal_lm(GPT2Config(architectures=["GPT2ForSequenceClassification"]))
    assert not is_causal_lm(BertConfig(architectures=["BertForMaskedLM"]))
    assert not is_causal_lm(BertConfig()) and not is_causal_lm(BartConfig()) and not is_causal_lm(T5Config())
    assert is_causal_lm(BertConfig(architectures=["BertLMHeadModel"]))  # a checkpoint saved as a causal LM is one
