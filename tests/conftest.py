"""Shared fixtures: tiny models built from configs (see tiny_models.py), seeded for determinism."""

from __future__ import annotations

import logging
import os

# Tests never reach the network, whoever runs them: set before any Hugging Face library is imported.
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import huggingface_hub  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_models import MODEL_NAMES, make_tiny  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and OpenMP threads spin slowly on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_bert():
    """BertForSequenceClassification (2 layers, hidden 16, vocab 64)."""
    return make_tiny("bert")


@pytest.fixture
def tiny_bert_mc():
    """BertForMultipleChoice."""
    return make_tiny("bert_mc")


@pytest.fixture
def tiny_roberta():
    """RobertaForMultipleChoice."""
    return make_tiny("roberta")


@pytest.fixture
def tiny_gpt2():
    """GPT2ForSequenceClassification with pad_token_id set."""
    return make_tiny("gpt2")


@pytest.fixture
def tiny_gpt2_lm():
    """GPT2LMHeadModel with lm_head tied to wte."""
    return make_tiny("gpt2_lm")


@pytest.fixture
def tiny_t5():
    """T5ForConditionalGeneration (tied shared/lm_head, as T5's default)."""
    return make_tiny("t5")


@pytest.fixture
def tiny_mbart():
    """MBartForConditionalGeneration."""
    return make_tiny("mbart")


@pytest.fixture
def tiny_esm():
    """EsmForSequenceClassification."""
    return make_tiny("esm")


@pytest.fixture(params=MODEL_NAMES)
def tiny_model(request):
    """(name, model) for every tiny model."""
    return request.param, make_tiny(request.param)


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the repository (real MAWPS / ASDiv-A / SVAMP CSVs); skips when absent."""
    if not (SHARED_DATA / "arithmetic").is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


# Recorded once, when the session starts: a module-scoped fixture that runs the CLI sets levels before the first
# test of its module starts, so levels recorded per test would keep what it set for every later module.
_LOGGER_LEVELS_AT_START = {name: logging.getLogger(name).level
                           for name in ("run_smc", "smc_trainer", "transformers", "datasets")}


@pytest.fixture(autouse=True)
def restore_logger_levels():
    """`run_smc.setup_logging` (CLI tests) sets package logger levels globally; put them back after each test
    so a later test's `caplog` sees what it expects whatever ran before it."""
    yield
    for name, level in _LOGGER_LEVELS_AT_START.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def hub_offline(monkeypatch):
    """Offline mode for huggingface_hub and datasets even if the environment does not set it: no download."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
