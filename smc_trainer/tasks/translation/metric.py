"""sacreBLEU per translation direction, and the benchmark's headline: the mean over directions.

The score is `sacrebleu.corpus_bleu(hypotheses, [references], tokenize=...)` with sacreBLEU's
defaults (exponential smoothing, case-sensitive), computed through the `evaluate` module that
ships with the package (`smc_trainer.metrics`, "sacrebleu"): the Hub's `evaluate.load("sacrebleu")`
wraps the same call but fetches its script at run time, which fails offline.

sacreBLEU tokenizer per target language (`--bleu_tokenize`, default `zh=zh,ja=char`): `13a`
(sacreBLEU's default) for space-delimited languages; `zh` (sacreBLEU's Chinese tokenizer, one
token per CJK character, as in WMT) for Chinese; `char` (character-level BLEU) for Japanese,
because sacreBLEU's `ja-mecab` needs the extra `sacrebleu[ja]` packages (MeCab + IPAdic). Both
`zh` and `char` are built into sacreBLEU and need no download. Pass `--bleu_tokenize
zh=zh,ja=ja-mecab` where those packages are installed. Burmese (`my`) keeps `13a`: sacreBLEU has no
Burmese tokenizer, and `13a` splits only at its (phrase-level) spaces; `my=char` is the alternative.

Hypotheses and references are both decoded from token ids (`skip_special_tokens`), as in fairseq
`generate` and transformers' run_translation example: references are the tokenizer's round trip of
the raw text (evaluation targets are never truncated below the model's length limit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sacrebleu.metrics import BLEU

from smc_trainer.errors import UsageError
from smc_trainer.metrics import generated_texts, load_metric
from smc_trainer.tasks.translation.languages import PIVOT, LanguageCodes

DEFAULT_TOKENIZE = "13a"


def parse_bleu_tokenize(value: str | None) -> dict[str, str]:
    """`"zh=zh,ja=char"` -> {"zh": "zh", "ja": "char"}; names are checked against sacreBLEU's tokenizers."""
    result: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in (value or "").split(","))):
        lang, _, name = item.partition("=")
        if not lang or name not in BLEU.TOKENIZERS:
            raise UsageError(f"--bleu_tokenize entries must be LANG=TOKENIZER with TOKENIZER one of "
                             f"{', '.join(BLEU.TOKENIZERS)}; got {item!r}")
        result[lang.strip()] = name
    return result


def corpus_bleu(hypotheses: list[str], references: list[str], tokenize: str = DEFAULT_TOKENIZE) -> float:
    """Corpus sacreBLEU (0-100) of `hypotheses` against one reference each.

    sacreBLEU computes a perfect corpus as exp(log 100) = 100.00000000000004; BLEU cannot exceed
    100, so that float noise is clipped and a perfect hypothesis scores exactly 100.
    """
    if len(hypotheses) != len(references):
        raise UsageError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    score = load_metric("sacrebleu").compute(predictions=hypotheses, references=references, tokenize=tokenize)
    return min(score["score"], 100.0)


class BleuMetric:
    """`compute_metrics` for generated translations: {"bleu": corpus sacreBLEU}.

    The target language (hence the sacreBLEU tokenizer) is read from the language code that every
    label sequence carries, so one instance serves every direction.
    """

    def __init__(self, tokenizer: Any, codes: LanguageCodes, tokenize_by_lang: dict[str, str]):
        self.tokenizer = tokenizer
        self.codes = codes
        self.tokenize_by_lang = tokenize_by_lang

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        hypotheses = generated_texts(eval_pred, self.tokenizer, "BLEU")
        pad = self.tokenizer.pad_token_id
        labels = [row[(row >= 0) & (row != pad)].tolist() for row in np.asarray(eval_pred.label_ids)]
        tokenize = self._tokenize_for(labels)
        references = [t.strip() for t in self.tokenizer.batch_decode(labels, skip_special_tokens=True)]
        return {"bleu": corpus_bleu(hypotheses, references, tokenize)}

    def _tokenize_for(self, labels: list[list[int]]) -> str:
        targets = {self.codes.target_language(row) for row in labels}
        if None in targets:
            raise UsageError(f"a label sequence carries no language code of {sorted(self.codes.ids)} "
                             f"({self.codes.code_format} format)")
        methods = {self.tokenize_by_lang.get(lang, DEFAULT_TOKENIZE) for lang in targets}
        if len(methods) > 1:
            raise UsageError(f"one evaluation set mixes target languages {sorted(targets)} that need different "
                             "sacreBLEU tokenizers; evaluate each direction on its own")
        return methods.pop()


def make_aggregate(names: list[str]) -> Callable[[dict[str, float], str], dict[str, float]]:
    """`aggregate_metrics` for a split: `<split>_bleu` (the reported number) is the mean over all directions;
    `<split>_bleu_into_en` / `<split>_bleu_from_en` average the directions into / out of English."""

    def aggregate(metrics: dict[str, float], split: str) -> dict[str, float]:
        missing = [n for n in names if f"{split}_{n}_bleu" not in metrics]
        if missing:
            raise UsageError(f"{split}: no BLEU for direction(s) {', '.join(missing)}")
        groups = {
            "bleu": names,
            f"bleu_into_{PIVOT}": [n for n in names if n.endswith(f"-{PIVOT}")],
            f"bleu_from_{PIVOT}": [n for n in names if n.startswith(f"{PIVOT}-")],
        }
        return {f"{split}_{key}": float(np.mean([metrics[f"{split}_{n}_bleu"] for n in group]))
                for key, group in groups.items() if group}

    return aggregate
