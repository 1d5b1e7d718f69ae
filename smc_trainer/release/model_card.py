"""The model card (README.md) of a sparse release, generated from the run that produced it.

YAML metadata through `huggingface_hub.ModelCardData` (library_name, tags, base_model, datasets, and a
`model-index` of `EvalResult`s: each metric per split, the sparsity of the prunable set and of all parameters
with the method and pattern), then markdown: method, target and achieved sparsity, the prunable set,
per-layer sparsity, metrics, data, base checkpoint, the exact command that reproduces the run, how to load it,
and the files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TAGS = ["sparse", "pruning", "sparsity", "smc-bench", "smc-trainer"]
# task family (recipes' `task:`) -> the Hub's task type and its name in words
TASK_TYPES = {
    "multiple_choice": ("multiple-choice", "Multiple choice"),
    "quickstart": ("multiple-choice", "Multiple choice"),
    "arithmetic": ("text2text-generation", "Math word problems (equation generation)"),
    "protein": ("text-classification", "Protein property classification"),
    "translation": ("translation", "Translation"),
    "causal_lm": ("text-generation", "Causal language model scored on SMC-Bench's tasks"),
}
# a model class's head -> the Hub's task type, for runs without a recipe (the Python API)
HEAD_TASK_TYPES = {
    "ForMultipleChoice": ("multiple-choice", "Multiple choice"),
    "ForSequenceClassification": ("text-classification", "Text classification"),
    "ForTokenClassification": ("token-classification", "Token classification"),
    "ForQuestionAnswering": ("question-answering", "Question answering"),
    "ForCausalLM": ("text-generation", "Text generation"),
    "ForConditionalGeneration": ("text2text-generation", "Text-to-text generation"),
    "ForSeq2SeqLM": ("text2text-generation", "Text-to-text generation"),
}
SPLIT_PREFIXES = {"eval_": "validation", "test_": "test"}
_NOT_SCORES = ("_samples",)  # counters among the eval_/test_ metrics, not scores
_SPEED_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

TUNER_NAMES = {"lora": "LoRA", "ia3": "IA3"}  # adapter metadata's `peft` -> its name


@dataclass
class CardFacts:
    """Everything the card says; `hub.write_release_files` gathers it from the run."""

    sparsity: dict[str, Any]
    """The `sparsity` dict written into config.json (method, target, achieved, distribution, scope ...)."""
    layers: list[dict[str, Any]]
    """Per-layer rows of the sparsity report: name, shape, total, kept, nonzero."""
    metrics: dict[str, float] = field(default_factory=dict)
    run: dict[str, Any] | None = None
    """`provenance.run_config_dict` of the run (command, recipe, argument dataclasses)."""
    architecture: str | None = None
    base_model: str | None = None
    """What the run started from, in words or as an id."""
    base_model_id: str | None = None
    """The Hub id of the base checkpoint, for the card's metadata."""
    dataset: str | None = None
    repo_id: str | None = None
    files: dict[str, int] = field(default_factory=dict)
    """File name -> size in bytes of the release."""
    compressed: dict[str, int] | None = None
    """{'dense_bytes': ..., 'compressed_bytes': ...} when model.sparse.safetensors was written."""
    pattern: str | None = None
    """The sparsity pattern of the masks: 'unstructured' or N:M (None: not recorded, e.g. external masks)."""
    overall_sparsity: float | None = None
    """The share of exact zeros among all saved parameters (the prunable set and the rest), measured."""


def is_hub_id(name: str | None) -> bool:
    """A Hub repository id `org/name` (not a local path, nor a bare name such as the quickstart's `tiny`)."""
    return bool(name) and _HUB_ID.fullmatch(name) is not None and not os.path.exists(name)


def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Evaluation and test scores (and the training loss), without speed counters."""
    keep = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and (k.startswith(("eval_", "test_")) or k == "train_loss") and not k.endswith(_SPEED_SUFFIXES)}
    return dict(sorted(keep.items(), key=lambda kv: (not kv[0].startswith("eval_"), kv[0])))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None or value == "" else str(value)


def _cell(value: Any) -> str:
    """A markdown table cell: `|` escaped, even inside code spans (GFM splits cells on it otherwise)."""
    return _fmt(value).replace("|", "\\|")


def _size(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


def _pattern_tag(pattern: str | None) -> list[str]:
    """`unstructured-sparsity`, `2-4-sparsity` (tags hold no colon)."""
    return [f"{pattern.replace(':', '-')}-sparsity"] if pattern else []


def task_of(facts: CardFacts) -> tuple[str, str] | None:
    """(Hub task type, its name): from the recipe's task family, else from the model class's head."""
    recipe = (facts.run or {}).get("recipe") or {}
    if recipe.get("task") in TASK_TYPES:
        return TASK_TYPES[recipe["task"]]
    head = next((h for h in HEAD_TASK_TYPES if (facts.architecture or "").endswith(h)), None)
    return HEAD_TASK_TYPES[head] if head else None


def _dataset_of(facts: CardFacts) -> dict[str, Any] | None:
    """The `dataset` of the model-index: the Hub id (type) and config when the run read a Hub dataset, else
    the recipe's name as type and the data in words as name. None when the card does not know the data."""
    run = facts.run or {}
    data_args, recipe = run.get("data_args") or {}, run.get("recipe") or {}
    hub_id = data_args.get("dataset_name")
    if is_hub_id(hub_id):
        return {"dataset_type": hub_id, "dataset_name": hub_id, "dataset_config": data_args.get("dataset_config_name")}
    if facts.dataset and recipe.get("name"):
        return {"dataset_type": recipe["name"], "dataset_name": facts.dataset}
    return None


def _metric_entry(key: str, metric: str | None) -> tuple[str, str] | None:
    """(split, metric type) of an `eval_*` / `test_*` score, None for counters. A subset's score
    (`test_middle_accuracy`) has the recipe's metric as its type and keeps its full key as its name."""
    prefix = next((p for p in SPLIT_PREFIXES if key.startswith(p)), None)
    if prefix is None or key.endswith(_NOT_SCORES):
        return None
    rest = key[len(prefix):]
    return SPLIT_PREFIXES[prefix], metric if metric and rest.endswith(f"_{metric}") else rest


def eval_results(facts: CardFacts) -> list[EvalResult]:
    """The card's model-index: every validation and test score on its split, then the sparsity of the prunable
    set and of all parameters (metric type `sparsity`, config the pattern, args method / pattern / target).
    Empty when the task or the dataset is unknown (the Hub needs both)."""
    task, dataset = task_of(facts), _dataset_of(facts)
    if task is None or dataset is None:
        return []
    recipe = (facts.run or {}).get("recipe") or {}
    splits = recipe.get("splits") or {}
    common = {"task_type": task[0], "task_name": task[1], **dataset}
    results = []
    for key, value in headline_metrics(facts.metrics).items():
        entry = _metric_entry(key, recipe.get("metric"))
        if entry is not None:
            split = splits.get(entry[0]) or entry[0]
            results.append(EvalResult(**common, dataset_split=split, metric_type=entry[1], metric_name=key,
                                      metric_value=float(value)))
    s = facts.sparsity
    args = {"method": s["method"], **({"pattern": facts.pattern} if facts.pattern else {}),
            "target": s["target_sparsity"]}
    measured = [("sparsity of the prunable weights", s["achieved_sparsity"]),
                ("sparsity of all parameters", facts.overall_sparsity)]
    for name, value in measured:
        if value is not None:
            results.append(EvalResult(**common, metric_type="sparsity", metric_name=name,
                                      metric_value=round(float(value), 6), metric_config=facts.pattern,
                                      metric_args=dict(args)))
    return results


def _title(facts: CardFacts) -> str:
    return facts.repo_id or f"{facts.base_model or 'model'} - {facts.sparsity['method']} sparse"


def card_data(facts: CardFacts) -> ModelCardData:
    """The card's YAML metadata: library, tags (the method and the pattern among them), base model, datasets and
    the model-index (`eval_results`)."""
    s = facts.sparsity
    results = eval_results(facts)
    return ModelCardData(
        library_name="transformers",
        tags=TAGS + ([s["method"]] if s.get("phase") else []) + _pattern_tag(facts.pattern),
        base_model=facts.base_model_id if is_hub_id(facts.base_model_id) else None,
        datasets=[facts.dataset] if is_hub_id(facts.dataset) else None,
        model_name=_title(facts) if results else None,
        eval_results=results or None,
    )


def _sparsity_section(facts: CardFacts) -> list[str]:
    s, scope = facts.sparsity, facts.sparsity.get("scope", {})
    rows = [
        ("method", f"`{s['method']}` ({s.get('phase', '-')})"),
        ("target sparsity", _fmt(s["target_sparsity"])),
        ("achieved sparsity (zeros in the weights)", _fmt(s["achieved_sparsity"])),
        ("mask sparsity", _fmt(s["mask_sparsity"])),
        ("distribution over layers", s.get("distribution")),
        ("pattern", facts.pattern),
        ("sparsity of all parameters (zeros in every saved tensor)", facts.overall_sparsity),
        ("prunable weights", f"{_fmt(s['prunable_parameters'])} of {_fmt(s.get('total_parameters'))} parameters"),
        ("embeddings / task head prunable", _scope_cell(scope)),
        ("include / exclude regex", " / ".join(f"`{v}`" if v else "-" for v in (scope.get("prune_include"),
                                                                                   scope.get("prune_exclude")))),
        ("optimizer steps", _fmt(s.get("optimizer_steps"))),
    ]
    lines = ["## Sparsity", "", "| | |", "| --- | --- |", *[f"| {k} | {_cell(v)} |" for k, v in rows], ""]
    lines += ["<details><summary>Per-layer sparsity (mask, and measured on the weights)</summary>", "",
              "| layer | shape | kept / total | sparsity | measured |", "| --- | --- | ---: | ---: | ---: |"]
    for r in facts.layers:
        total = max(1, r["total"])
        lines.append(f"| `{r['name']}` | {'x'.join(map(str, r['shape']))} | {r['kept']:,} / {r['total']:,} | "
                     f"{1 - r['kept'] / total:.4f} | {1 - r['nonzero'] / total:.4f} |")
    return lines + ["", "</details>", ""]


def _results_section(facts: CardFacts) -> list[str]:
    metrics = headline_metrics(facts.metrics)
    if not metrics:
        return ["## Results", "", "No evaluation metrics were recorded for this run.", ""]
    lines = ["## Results", "", "`eval_*`: validation split (used for any checkpoint selection); `test_*`: test split.",
             "", "| metric | value |", "| --- | ---: |"]
    return lines + [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()] + [""]


def _training_section(facts: CardFacts) -> list[str]:
    lines = ["## Training", "", f"- base checkpoint: {_fmt(facts.base_model)}", f"- data: {_fmt(facts.dataset)}"]
    run = facts.run or {}
    recipe, args = run.get("recipe"), run.get("training_args") or {}
    if recipe:
        lines.append(f"- recipe: `{recipe['name']}` (task `{recipe['task']}`, metric `{recipe['metric']}`)")
    length = "max_steps" if (args.get("max_steps") or -1) > 0 else "num_train_epochs"
    picks = ("learning_rate", length, "per_device_train_batch_size", "gradient_accumulation_steps", "seed")
    hyper = ", ".join(f"{k} {args[k]}" for k in picks if k in args)
    if hyper:
        lines.append(f"- hyper-parameters: {hyper}; all values in `smc_run_config.json`")
    lines += ["", "## How to reproduce", ""]
    if run.get("command"):
        lines += [f"With smc-trainer {run.get('smc_trainer_version', '')} installed, from its repository root "
                  "(where `run_smc.py` and `recipes/` are):", "",
                  "```bash", run["command"] + " --output_dir my_run", "```", ""]
    else:
        lines += ["Trained through the Python API (`SparseTrainer`); its arguments are in `smc_run_config.json`.", ""]
    return lines


def _adapter_section(facts: CardFacts) -> list[str]:
    a = facts.sparsity.get("adapter")
    if not a:
        return []
    tuner = TUNER_NAMES.get(a.get("peft") or "lora", str(a.get("peft")).upper())
    what = (f"the adapter alone ({tuner} weights and the fully trained task head) and the masks of its sparse base"
            if a["release"] == "adapter" else "the merged model: the adapters merged into the sparse base by peft's "
            "`merge_and_unload()`")
    how = ("masked by the base weight's mask in training and in the merge, so every pruned weight stays exactly zero"
           if a["sparse_adapter"] else f"plain {tuner}, merged and then re-masked (training did not see the mask)")
    # IA3 rescales activations: it has no rank, alpha or dropout, so those rows would only print "None"
    shape = ([f"| rank / alpha / dropout | {a['r']} / {a['lora_alpha']} / {a['lora_dropout']} |"]
             if a.get("r") is not None else [])
    return [f"## Adapter ({tuner})", "", f"Trained with {tuner} on a frozen sparse base; this release is {what}.", "",
            "| | |", "| --- | --- |",
            f"| base | `{_fmt(a.get('base'))}` |", *shape, f"| adapter update | {how} |",
            f"| adapters on | {a.get('adapted_modules', '-')} modules (names matching "
            f"{_cell(', '.join(a['target_modules']))}) |",
            f"| trained fully | {_cell(', '.join(a.get('modules_to_save') or []) or '-')} |", ""]


def _usage_section(facts: CardFacts) -> list[str]:
    where = facts.repo_id or "path/to/this/folder"
    cls = facts.architecture or "AutoModel"
    adapter = facts.sparsity.get("adapter") or {}
    if adapter.get("release") == "adapter":
        return [
            "## How to use", "",
            "Load the base, then the adapter on it: `load_sparse_adapter` zeroes the base's pruned weights with "
            "`sparse_masks.safetensors` (after checking every shape) and calls `PeftModel.from_pretrained` with "
            "masked LoRA layers, so the adapter computes exactly what was trained:", "",
            "```python", "from transformers import AutoModel  # the task's model class", "",
            "from smc_trainer.training.adapters import load_sparse_adapter", "",
            f'base = AutoModel.from_pretrained("{_fmt(adapter.get("base"))}")',
            f'model = load_sparse_adapter(base, "{where}")', "merged = model.merge_and_unload()  # exact zeros kept",
            "```", "",
            "A plain `PeftModel.from_pretrained(base, path)` would load unmasked LoRA layers, whose update fills the "
            "pruned weights.", "",
        ]
    return [
        "## How to use", "",
        "The weights are standard safetensors with the pruned weights stored as exact zeros:", "",
        "```python", f"from transformers import {cls}", "", f'model = {cls}.from_pretrained("{where}")', "```", "",
        "With the bool masks (e.g. to keep training sparse) and the sparsity report:", "",
        "```python", "from smc_trainer.release.hub import load_sparse_pretrained", "",
        f'ckpt = load_sparse_pretrained("{where}")   # .model, .masks, .report, .metrics, .run_config',
        "# SparseTrainer(model=ckpt.model, args=..., initial_masks=ckpt.masks) keeps exactly this mask", "```", "",
    ]


def _files_section(facts: CardFacts) -> list[str]:
    what = {
        "model.safetensors": "the weights, dense layout, zeros in place (loads with `from_pretrained`)",
        "config.json": "the model config; its `sparsity` entry holds the metadata above",
        "sparse_masks.safetensors": "bool keep-masks, one per prunable weight, keyed by parameter name",
        "sparsity_report.json": "per-layer kept / total / non-zero counts, measured from the tensors",
        "smc_run_config.json": "smc-trainer version, the command, the recipe and every argument",
        "model.sparse.safetensors": "the weights in smc-trainer's bitmask format (`smc_trainer.release.compressed`)",
        "all_results.json": "the metrics above",
        "adapter_config.json": "peft's LoRA configuration",
        "adapter_model.safetensors": "the LoRA factors and the fully trained task head",
    }
    lines = ["## Files", "", "| file | size | content |", "| --- | ---: | --- |"]
    lines += [f"| `{n}` | {_size(facts.files[n])} | {d} |" for n, d in what.items() if n in facts.files]
    if facts.compressed:
        dense, small = facts.compressed["dense_bytes"], facts.compressed["compressed_bytes"]
        lines += ["", f"Compressed: `model.sparse.safetensors` is {_size(small)} against {_size(dense)} for "
                  f"`model.safetensors` ({small / dense:.3f}x). It stores a bitmask of the non-zero elements "
                  "(1 bit each), their values and the signs of the zeros; "
                  "`smc_trainer.release.compressed.load_compressed` restores the exact state dict. Delete "
                  "`model.safetensors` to ship only the compressed file; `load_sparse_pretrained` then reads it."]
    return lines + [""]


def model_card(facts: CardFacts) -> ModelCard:
    """The card of one sparse release."""
    s = facts.sparsity
    title = _title(facts)
    intro = (f"`{_fmt(facts.base_model)}` fine-tuned with the sparse method **{s['method']}** to "
             f"**{s['achieved_sparsity']:.2%}** sparsity (target {s['target_sparsity']:g}) over its prunable weights, "
             "by smc-trainer, the Hugging Face Trainer implementation of SMC-Bench "
             "([Sparsity May Cry, ICLR 2023](https://arxiv.org/abs/2303.02141)).")
    body = [f"# {title}", "", intro, "", *_sparsity_section(facts), *_results_section(facts),
            *_adapter_section(facts), *_training_section(facts), *_usage_section(facts), *_files_section(facts)]
    return ModelCard(f"---\n{card_data(facts).to_yaml()}\n---\n\n" + "\n".join(body))


def _scope_cell(scope: Mapping[str, Any]) -> str:
    """The embeddings / head flags, or what a decoder LM prunes: its blocks, plus only what --prune_include names."""
    flags = f"{scope.get('prune_embeddings')} / {scope.get('prune_heads')}"
    if not scope.get("decoder_blocks_only"):
        return flags
    if scope.get("prune_include"):
        return f"where --prune_include `{scope['prune_include']}` names them (a decoder LM: dense unless named)"
    return "False / False (a decoder LM prunes its decoder blocks' linears only)"
