"""Translation (SMC-Bench 2.4): recipes end to end offline, all 20 directions, language codes, sacreBLEU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    EvalPrediction,
    MBart50Tokenizer,
    MBartConfig,
    MBartForConditionalGeneration,
    MBartTokenizer,
    PreTrainedTokenizerFast,
)

import run_smc
from smc_trainer.engine.masks import MaskSet
from smc_trainer.engine.targets import find_targets
from smc_trainer.runs import pipeline
from smc_trainer.runs.ledger import Ledger
from smc_trainer.runs.recipes import load_recipe
from smc_trainer.tasks import get_task
from smc_trainer.tasks.translation import load_pairs
from smc_trainer.tasks.translation import metric as bleu
from smc_trainer.tasks.translation.data import load_pair, pair_name
from smc_trainer.tasks.translation.languages import (
    LANG_CODES,
    SMC_LANGUAGES,
    LanguageCodes,
    parse_languages,
    resolve_format,
)
from smc_trainer.tasks.translation.model import load_model_and_tokenizer
from smc_trainer.training.arguments import DataArguments, ModelArguments, SparseTrainingArguments, TranslationArguments

ALL = list(SMC_LANGUAGES)
DIRECTIONS = [d for lang in ALL for d in (f"{lang}-en", f"en-{lang}")]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
CODES = [LANG_CODES[x] for x in ["en", *ALL]]
WORDS_PER_LANG = 6


def words(lang: str) -> list[str]:
    return [f"{lang}{i}" for i in range(WORDS_PER_LANG)]


def generic_tokenizer() -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer (no mBART class) with the mBART language codes as special tokens."""
    vocab = SPECIALS + CODES + [w for lang in ["en", *ALL] for w in words(lang)]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens=CODES)


def tiny_mbart(vocab_size: int) -> MBartForConditionalGeneration:
    torch.manual_seed(0)
    config = MBartConfig(vocab_size=vocab_size, d_model=16, encoder_layers=1, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                         max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                         decoder_start_token_id=2, forced_eos_token_id=2)
    return MBartForConditionalGeneration(config)


def model_dir(root: Path, tokenizer=None) -> str:
    """A local checkpoint folder: a tiny mBART and `tokenizer` (default: the generic one)."""
    tokenizer = tokenizer or generic_tokenizer()
    folder = root / "tiny-mbart"
    tokenizer.save_pretrained(folder)
    tiny_mbart(len(tokenizer)).save_pretrained(folder)
    return str(folder)


def sentence(lang: str, i: int) -> str:
    ws = words(lang)
    return " ".join(ws[(i + k) % WORDS_PER_LANG] for k in range(4))


def write_pairs(root: Path, languages=ALL, splits=("train", "validation", "test"), rows: int = 4) -> str:
    """Tiny parallel data in the documented layout: DIR/<pair>/<split>.jsonl, OPUS-100 rows."""
    for lang in languages:
        folder = root / "data" / pair_name(lang)
        folder.mkdir(parents=True, exist_ok=True)
        for split in splits:
            lines = [json.dumps({"translation": {lang: sentence(lang, i), "en": sentence("en", i)}})
                     for i in range(rows)]
            (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(root / "data")


def run_flags(tmp_path: Path, recipe: str, method: str, *extra: str) -> list[str]:
    return ["--recipe", recipe, "--model_name_or_path", model_dir(tmp_path), "--data_dir", write_pairs(tmp_path),
            "--sparse_method", method, "--sparsity", "0.5" if method != "dense" else "0",
            "--max_steps", "2", "--warmup_steps", "0", "--learning_rate", "1e-3", "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "8", "--max_train_samples", "2", "--max_eval_samples", "2",
            "--max_source_length", "8", "--max_target_length", "8", "--generation_num_beams", "1",
            "--generation_max_length", "6", "--save_strategy", "no", "--output_dir", str(tmp_path / "out"),
            "--dense_cache_dir", str(tmp_path / "cache"), "--report_to", "none", "--disable_tqdm", "true",
            "--log_level", "warning", "--use_cpu", *extra]


def training_args(tmp_path: Path, **kw) -> SparseTrainingArguments:
    kw = {"predict_with_generate": True, "generation_max_length": 6, "generation_num_beams": 1, **kw}
    return SparseTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, **kw)


def build_bundle(tmp_path: Path, tokenizer=None, languages=ALL, **data_kw):
    data = {"train_languages": "fr,cs", "data_dir": write_pairs(tmp_path, languages), "max_eval_samples": 2, **data_kw}
    return get_task("translation").build(ModelArguments(model_name_or_path=model_dir(tmp_path, tokenizer)),
                                         DataArguments(**data), training_args(tmp_path), load_recipe("mt_2to2"))


# ---- the recipes, end to end ----------------------------------------------------------------------


@pytest.mark.parametrize("recipe,method", [("mt_2to2", "dense"), ("mt_2to2", "snip"), ("mt_5to5", "dense"),
                                           ("mt_5to5", "omp_after"), ("mt_10to10", "dense"), ("mt_10to10", "snip")])
def test_recipe_runs_offline_and_reports_bleu_over_all_20_directions(tmp_path, recipe, method):
    ledger = tmp_path / "ledger.jsonl"
    metrics = run_smc.main(run_flags(tmp_path, recipe, method, "--ledger", str(ledger)))
    expected = {f"{split}_{d}_bleu" for split in ("eval", "test") for d in DIRECTIONS} | {"eval_bleu", "test_bleu"}
    assert {k for k in metrics if k.endswith("_bleu")} == expected
    for split in ("eval", "test"):
        per_direction = [metrics[f"{split}_{d}_bleu"] for d in DIRECTIONS]
        assert all(0.0 <= b <= 100.0 for b in per_direction)
        assert metrics[f"{split}_bleu"] == pytest.approx(np.mean(per_direction))
        assert metrics[f"{split}_bleu_into_en"] == pytest.approx(np.mean(per_direction[0::2]))
        assert metrics[f"{split}_bleu_from_en"] == pytest.approx(np.mean(per_direction[1::2]))
        assert all(metrics[f"{split}_{d}_samples"] == 2 for d in DIRECTIONS)
    trained = len(load_recipe(recipe).args["train_languages"].split(","))
    assert metrics["train_samples"] == 2 * 2 * trained  # 2 sentence pairs per language, both directions
    if method != "dense":
        assert metrics["sparsity/overall"] == pytest.approx(0.5, abs=1e-3)
    (record,) = Ledger(str(ledger)).records()
    assert record["metric"] == "bleu" and expected <= set(record["metrics"])
    assert all(record["metrics"][k] == pytest.approx(metrics[k]) for k in expected)  # per direction, in the ledger


def test_recipes_hold_the_paper_hyper_parameters():
    for name, train in (("mt_2to2", "fr,cs"), ("mt_5to5", "fr,cs,de,gu,ja"),
                        ("mt_10to10", "fr,cs,de,gu,ja,my,ro,ru,vi,zh")):
        recipe = load_recipe(name)
        assert recipe.task == "translation" and recipe.metric == "bleu"
        args = recipe.args
        assert args["train_languages"] == train and args["eval_languages"] == ",".join(ALL)
        assert (args["model_name_or_path"], args["dataset_name"]) == ("facebook/mbart-large-cc25",
                                                                      "Helsinki-NLP/opus-100")
        assert (args["learning_rate"], args["warmup_steps"], args["max_steps"]) == (3e-5, 2500, 40000)
        assert (args["translation_dropout"], args["translation_attention_dropout"]) == (0.3, 0.1)
        assert (args["label_smoothing_factor"], args["weight_decay"], args["max_grad_norm"]) == (0.2, 0.0, 0.0)
        assert (args["adam_beta1"], args["adam_beta2"], args["adam_epsilon"]) == (0.9, 0.98, 1e-6)


def test_dropout_flags_reach_the_model_config(tmp_path):
    dropouts = TranslationArguments(translation_dropout=0.3, translation_attention_dropout=0.1)
    model, _, _ = load_model_and_tokenizer(ModelArguments(model_name_or_path=model_dir(tmp_path)), dropouts)
    assert (model.config.dropout, model.config.attention_dropout) == (0.3, 0.1)


# ---- evaluation directions and language codes -------------------------------------------------------


def test_language_codes_of_the_ten_languages_and_english():
    assert len(DIRECTIONS) == 20
    assert {x: LANG_CODES[x] for x in ["en", *ALL]} == {
        "en": "en_XX", "fr": "fr_XX", "cs": "cs_CZ", "de": "de_DE", "gu": "gu_IN", "ja": "ja_XX", "my": "my_MM",
        "ro": "ro_RO", "ru": "ru_RU", "vi": "vi_VN", "zh": "zh_CN"}
    for tokenizer_cls in (MBartTokenizer, MBart50Tokenizer):  # both real tokenizers know every code
        tok = tokenizer_cls()
        codes = LanguageCodes(tok, ALL, resolve_format(tok, "auto"))
        assert {x: tok.convert_ids_to_tokens(codes.ids[x]) for x in ["en", *ALL]} == {
            x: LANG_CODES[x] for x in ["en", *ALL]}


def test_training_on_2_languages_evaluates_all_20_directions(tmp_path):
    bundle = build_bundle(tmp_path)
    assert list(bundle.eval_dataset) == DIRECTIONS and list(bundle.test_dataset) == DIRECTIONS
    assert set(bundle.eval_kwargs) == set(DIRECTIONS)
    assert len(bundle.train_dataset) == 4 * 2 * 2  # fr and cs, 4 pairs each, both directions


def _target_language(tokenizer, label_ids) -> str:
    """The language of a label sequence's text, read from its words (`fr3` -> fr)."""
    text = tokenizer.decode([i for i in label_ids if i >= 0], skip_special_tokens=True)
    return {w.rstrip("0123456789") for w in text.split()}.pop()


@pytest.mark.parametrize("code_format", ["cc25", "mbart50"])
def test_mixed_batch_gives_every_example_its_own_target_code(tmp_path, code_format):
    bundle = build_bundle(tmp_path, lang_code_format=code_format)
    tok, ids = bundle.processing_class, {lang: bundle.processing_class.convert_tokens_to_ids(LANG_CODES[lang])
                                         for lang in ["en", "fr", "cs"]}
    batch = bundle.data_collator([bundle.train_dataset[i] for i in range(len(bundle.train_dataset))])
    targets = [_target_language(tok, row.tolist()) for row in batch["labels"]]
    assert set(targets) == {"en", "fr", "cs"}  # the batch mixes directions
    for inputs, labels, decoder_inputs, target in zip(batch["input_ids"], batch["labels"], batch["decoder_input_ids"],
                                                      targets, strict=True):
        labels = labels[labels != -100].tolist()
        source_text = tok.decode(inputs, skip_special_tokens=True)
        source = {w.rstrip("0123456789") for w in source_text.split()}.pop()
        assert (source == "en") != (target == "en")
        inputs = inputs[inputs != tok.pad_token_id].tolist()
        if code_format == "cc25":  # X </s> <src>; labels Y </s> <tgt>; the decoder starts with <tgt>
            assert inputs[-2:] == [tok.eos_token_id, ids[source]]
            assert labels[-2:] == [tok.eos_token_id, ids[target]]
            assert decoder_inputs[0] == ids[target] and decoder_inputs[1:len(labels)].tolist() == labels[:-1]
        else:  # <src> X </s>; labels <tgt> Y </s>; the decoder starts with </s> then <tgt>
            assert inputs[0] == ids[source] and inputs[-1] == tok.eos_token_id
            assert labels[0] == ids[target] and labels[-1] == tok.eos_token_id
            assert decoder_inputs[:2].tolist() == [tok.eos_token_id, ids[target]]


@pytest.mark.parametrize("tokenizer_cls,expected_format", [(MBartTokenizer, "cc25"), (MBart50Tokenizer, "mbart50"),
                                                           (None, "cc25")])
def test_generation_for_each_direction_starts_with_its_target_code(tmp_path, tokenizer_cls, expected_format):
    """Real mBART tokenizer classes (tiny in-memory vocabularies) and a generic one, through evaluate_split."""
    tokenizer = tokenizer_cls() if tokenizer_cls is not None else None
    bundle = build_bundle(tmp_path, tokenizer=tokenizer, languages=["fr", "cs", "ja"], eval_languages="fr,ja")
    tok = bundle.processing_class
    assert resolve_format(tok, "auto") == expected_format
    english = tok.convert_tokens_to_ids(LANG_CODES["en"])
    # settings a checkpoint's generation config may carry must not leak into any direction's decoding
    bundle.model.generation_config.decoder_start_token_id = tok.bos_token_id
    bundle.model.generation_config.forced_bos_token_id = english
    starts: list[list[int]] = []

    def spy(eval_pred):
        starts.append(eval_pred.predictions[:, :2].tolist())
        return bundle.compute_metrics(eval_pred)

    trainer = pipeline.SparseTrainer(model=bundle.model, args=training_args(tmp_path), processing_class=tok,
                                     data_collator=bundle.data_collator, compute_metrics=spy)
    metrics = pipeline.evaluate_split(trainer, bundle, "test", bundle.test_dataset)
    assert list(bundle.test_dataset) == ["fr-en", "en-fr", "ja-en", "en-ja"] and len(starts) == 4
    for name, rows in zip(bundle.test_dataset, starts, strict=True):
        code = tok.convert_tokens_to_ids(LANG_CODES[name.split("-")[1]])
        expected = [code] if expected_format == "cc25" else [tok.eos_token_id, code]
        assert all(row[:len(expected)] == expected for row in rows), (name, rows)
    if expected_format == "cc25":  # nothing is forced after the target code
        assert not all(row[1] == english for rows in starts for row in rows), starts
    assert metrics["test_bleu"] == pytest.approx(np.mean([metrics[f"test_{n}_bleu"] for n in bundle.test_dataset]))


def test_language_code_errors(tmp_path):
    with pytest.raises(ValueError, match="--train_languages: every language must be one of .*fr.*; got 'xx'"):
        parse_languages("fr,xx", "train_languages")
    with pytest.raises(ValueError, match="--eval_languages lists a language twice"):
        parse_languages("fr,fr", "eval_languages")
    assert parse_languages(None, "eval_languages", default=SMC_LANGUAGES) == ALL
    with pytest.raises(ValueError, match="--lang_code_format must be one of auto, cc25, mbart50; got 'x'"):
        resolve_format(generic_tokenizer(), "x")
    no_codes = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1},
                                                                                   unk_token="<unk>")),
                                       eos_token="</s>", unk_token="<unk>")
    with pytest.raises(ValueError, match="no token for the language code.*en_XX.*fr_XX"):
        LanguageCodes(no_codes, ["fr"], "cc25")


def test_training_flags_that_would_give_wrong_bleu_are_refused(tmp_path):
    task = get_task("translation")
    for bad, message in (({"predict_with_generate": False}, "--predict_with_generate true"),
                         ({"eval_strategy": "steps", "eval_steps": 5}, "--eval_strategy must be no; got 'steps'")):
        args = SparseTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                       **{"predict_with_generate": True, **bad})
        with pytest.raises(ValueError, match=message):
            task.build(ModelArguments(), DataArguments(train_languages="fr"), args, None)


# ---- sacreBLEU --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokenize,text", [("13a", "The cat sat on the mat ."), ("zh", "我们今天去学校上课了。"),
                                           ("char", "私は学生です。")])
def test_perfect_hypothesis_scores_exactly_100(tokenize, text):
    assert bleu.corpus_bleu([text, text + " ok"], [text, text + " ok"], tokenize) == 100.0


def test_a_perfect_system_scores_100_in_every_direction_through_the_trainer(tmp_path, monkeypatch):
    bundle = build_bundle(tmp_path, languages=["fr", "cs", "zh"], eval_languages="fr,zh")
    pad = bundle.processing_class.pad_token_id

    def oracle(labels, **kwargs):  # "generates" the reference of every example
        return labels.masked_fill(labels == -100, pad)

    monkeypatch.setattr(bundle.model, "generate", oracle)
    trainer = pipeline.SparseTrainer(model=bundle.model, args=training_args(tmp_path),
                                     processing_class=bundle.processing_class, data_collator=bundle.data_collator,
                                     compute_metrics=bundle.compute_metrics)
    metrics = pipeline.evaluate_split(trainer, bundle, "test", bundle.test_dataset)
    assert {k: v for k, v in metrics.items() if "bleu" in k} == {
        **{f"test_{d}_bleu": 100.0 for d in ("fr-en", "en-fr", "zh-en", "en-zh")},
        "test_bleu": 100.0, "test_bleu_into_en": 100.0, "test_bleu_from_en": 100.0}


def test_bleu_is_sacrebleu_on_the_decoded_generations(tmp_path):
    bundle = build_bundle(tmp_path, languages=["fr", "cs"], eval_languages="fr,cs")
    tok, metric = bundle.processing_class, bundle.compute_metrics
    labels = np.array([row["labels"] for row in bundle.test_dataset["en-fr"]])  # fixed-length toy sentences
    assert metric(EvalPrediction(predictions=labels, label_ids=labels)) == {"bleu": 100.0}
    generated = labels.copy()
    generated[0, 1] = tok.convert_tokens_to_ids("fr5")
    generated[1, 2:] = -100  # the evaluation loop pads generations with -100
    hypotheses = [tok.decode(r[r >= 0], skip_special_tokens=True) for r in generated]
    references = [tok.decode(r, skip_special_tokens=True) for r in labels]
    expected = sacrebleu.corpus_bleu(hypotheses, [references]).score
    assert 0 < expected < 100
    assert metric(EvalPrediction(predictions=generated, label_ids=labels))["bleu"] == pytest.approx(expected)


def test_sacrebleu_tokenizer_follows_the_target_language(tmp_path, monkeypatch):
    bundle = build_bundle(tmp_path, languages=["fr", "cs", "ja", "zh"], eval_languages="fr,ja,zh")
    used = []
    monkeypatch.setattr(bleu, "corpus_bleu", lambda h, r, tokenize: used.append(tokenize) or 0.0)
    for name in ("fr-en", "en-fr", "en-ja", "en-zh"):
        labels = np.array([row["labels"] for row in bundle.test_dataset[name]])
        bundle.compute_metrics(EvalPrediction(predictions=labels, label_ids=labels))
    assert used == ["13a", "13a", "char", "zh"]
    assert bleu.parse_bleu_tokenize("zh=zh, ja=ja-mecab") == {"zh": "zh", "ja": "ja-mecab"}
    with pytest.raises(ValueError, match="--bleu_tokenize entries must be LANG=TOKENIZER .*got 'ja=mecab'"):
        bleu.parse_bleu_tokenize("ja=mecab")


def test_aggregate_needs_every_direction():
    aggregate = bleu.make_aggregate(["fr-en", "en-fr"])
    assert aggregate({"test_fr-en_bleu": 10.0, "test_en-fr_bleu": 20.0}, "test") == {
        "test_bleu": 15.0, "test_bleu_into_en": 10.0, "test_bleu_from_en": 20.0}
    with pytest.raises(ValueError, match="test: no BLEU for direction.*en-fr"):
        aggregate({"test_fr-en_bleu": 10.0}, "test")


# ---- prunable set -----------------------------------------------------------------------------------


def test_prunable_set_is_encoder_decoder_linears_plus_embeddings_per_flag():
    model = tiny_mbart(64)
    assert model.lm_head.weight is model.model.shared.weight  # tied: one tensor
    linears = {f"model.{side}.layers.0.{part}.weight" for side in ("encoder", "decoder")
               for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                            "fc1", "fc2")}
    linears |= {f"model.decoder.layers.0.encoder_attn.{p}_proj.weight" for p in ("q", "k", "v", "out")}
    embeddings = {"model.shared.weight", "model.encoder.embed_positions.weight",
                  "model.decoder.embed_positions.weight"}
    with_emb = find_targets(model, prune_embeddings=True)
    assert {t.name for t in with_emb} == linears | embeddings  # the tied LM head is counted once, as `shared`
    assert {t.name for t in find_targets(model, prune_embeddings=False)} == linears
    before = model.lm_head.weight.detach().clone()
    masks = MaskSet(with_emb)
    masks.set_masks({t.name: torch.rand(t.param.shape) > 0.5 for t in with_emb})
    masks.apply_to_weights()
    assert torch.equal(model.lm_head.weight, before * masks.masks["model.shared.weight"])  # pruned through `shared`


# ---- data loading and offline errors ----------------------------------------------------------------


def test_offline_hub_errors_name_the_ids_and_the_local_flags(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    cache = str(tmp_path / "cache")
    with pytest.raises(OSError, match="(?s)'Helsinki-NLP/opus-100' config 'cs-en'.*--data_dir"):
        load_pair("cs", ("train",), DataArguments(dataset_name="Helsinki-NLP/opus-100"),
                  ModelArguments(cache_dir=cache), None)
    with pytest.raises(OSError, match="(?s)'facebook/mbart-large-cc25'.*--model_name_or_path"):
        load_model_and_tokenizer(ModelArguments(model_name_or_path="facebook/mbart-large-cc25", cache_dir=cache),
                                 TranslationArguments())


def test_local_files_errors(tmp_path):
    data_dir = write_pairs(tmp_path, ["fr"])
    write_pairs(tmp_path, ["cs"], splits=("train", "validation"))
    args = DataArguments(data_dir=data_dir)
    with pytest.raises(FileNotFoundError, match="no folder .*de-en"):
        load_pairs(["fr"], ["fr", "de"], args, ModelArguments(), None)
    with pytest.raises(ValueError, match="the test split is missing for cs"):
        load_pairs(["fr"], ["fr", "cs"], args, ModelArguments(), None)
    only_eval = load_pairs(["fr"], ["fr"], args, ModelArguments(), None)
    assert set(only_eval["fr"]) == {"train", "validation", "test"}
    (Path(data_dir) / "en-fr" / "test.jsonl").write_text(json.dumps({"translation": {"de": "x", "en": "y"}}) + "\n")
    with pytest.raises(ValueError, match="en-fr test: 'translation' has no 'fr' entry"):
        load_pairs(["fr"], ["fr"], args, ModelArguments(), None)
