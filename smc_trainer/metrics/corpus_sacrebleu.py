"""Corpus sacreBLEU with one reference per hypothesis (an `evaluate` metric script).

Loaded by `smc_trainer.metrics.load_metric("sacrebleu")`; self-contained, as evaluate copies the
script into its module cache and imports it from there. The score is
`sacrebleu.corpus_bleu(predictions, [references], tokenize=...)` with sacreBLEU's defaults
(exponential smoothing, case-sensitive), as the Hub's `sacrebleu` metric computes it.
"""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Corpus-level sacreBLEU (0-100) of detokenized hypotheses against one reference each."
_KWARGS = """
predictions (list of str): detokenized hypotheses.
references (list of str): one detokenized reference per hypothesis.
tokenize (str): a sacreBLEU tokenizer name ("13a", "zh", "char", ...); default "13a".
Returns: {"score": float, "counts", "totals", "precisions", "bp", "sys_len", "ref_len"}.
"""


class SacreBleu(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, tokenize: str = "13a"):
        bleu = sacrebleu.corpus_bleu(predictions, [references], tokenize=tokenize)
        return {"score": bleu.score, "counts": bleu.counts, "totals": bleu.totals, "precisions": bleu.precisions,
                "bp": bleu.bp, "sys_len": bleu.sys_len, "ref_len": bleu.ref_len}
