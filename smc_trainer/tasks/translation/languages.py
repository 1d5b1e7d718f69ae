"""Languages, mBART language codes, and where a code goes in a sequence for each mBART flavour.

Two conventions exist, and the checkpoint decides which one a run must use:

- `cc25` (mBART-cc25, fairseq `translation_from_pretrained_bart`): source `X </s> <src>`, target
  `Y </s> <tgt>`. MBart's `shift_tokens_right` wraps the last token (the target code) to the front,
  so the decoder starts with the target code: at generation `decoder_start_token_id = <tgt>`.
- `mbart50` (mBART-50): source `<src> X </s>`, target `<tgt> Y </s>`; the decoder starts with
  `</s>` and the target code is forced as the first generated token (`forced_bos_token_id = <tgt>`).

Either way every example carries its own target code, so batches that mix directions train each
example towards its own target language.
"""

from __future__ import annotations

from typing import Any

from transformers.models.mbart.tokenization_mbart import FAIRSEQ_LANGUAGE_CODES as MBART_CC25_CODES
from transformers.models.mbart50.tokenization_mbart50 import FAIRSEQ_LANGUAGE_CODES as MBART50_CODES

from smc_trainer.errors import UsageError

PIVOT = "en"
"""SMC-Bench's data is English-centric: every language is trained and evaluated to and from English."""
SMC_LANGUAGES = ("fr", "cs", "de", "gu", "ja", "my", "ro", "ru", "vi", "zh")
"""The ten evaluation languages of SMC-Bench (paper section 3.4); 2-to-2 trains on the first two, 5-to-5 on five."""
LANG_CODES: dict[str, str] = {code.split("_")[0]: code for code in (*MBART_CC25_CODES, *MBART50_CODES)}
"""ISO 639-1 language -> mBART language code (`fr` -> `fr_XX`); cc25's 25 codes are the first 25 of mBART-50's."""
CODE_FORMATS = ("auto", "cc25", "mbart50")


def parse_languages(value: str | None, flag: str, default: tuple[str, ...] = ()) -> list[str]:
    """`"fr,cs"` -> `["fr", "cs"]`, checked against the languages that have an mBART code (English excluded)."""
    languages = [x.strip() for x in value.split(",") if x.strip()] if value else list(default)
    if not languages:
        raise UsageError(f"--{flag} needs at least one language, e.g. fr,cs; got {value!r}")
    valid = sorted(set(LANG_CODES) - {PIVOT})
    for lang in languages:
        if lang not in valid:
            raise UsageError(f"--{flag}: every language must be one of {', '.join(valid)} (each is paired with "
                             f"English); got {lang!r}")
    if len(set(languages)) != len(languages):
        raise UsageError(f"--{flag} lists a language twice: {value!r}")
    return languages


def directions(languages: list[str]) -> list[tuple[str, str]]:
    """Both directions through English for each language: [(fr, en), (en, fr), (cs, en), (en, cs), ...]."""
    return [d for lang in languages for d in ((lang, PIVOT), (PIVOT, lang))]


def direction_name(source: str, target: str) -> str:
    return f"{source}-{target}"


def resolve_format(tokenizer: Any, requested: str) -> str:
    """The code convention for `tokenizer`: `--lang_code_format` unless `auto`, else `mbart50` for the
    mBART-50 tokenizers and `cc25` for every other one (mBART-cc25's and generic tokenizers)."""
    if requested not in CODE_FORMATS:
        raise UsageError(f"--lang_code_format must be one of {', '.join(CODE_FORMATS)}; got {requested!r}")
    if requested != "auto":
        return requested
    return "mbart50" if type(tokenizer).__name__.startswith("MBart50") else "cc25"


class LanguageCodes:
    """Token ids of the language codes and of `</s>` in one tokenizer, and the sequence layout of one format."""

    def __init__(self, tokenizer: Any, languages: list[str], code_format: str):
        self.code_format = code_format
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise UsageError(f"the tokenizer ({type(tokenizer).__name__}) has no eos token; mBART needs </s>")
        self.ids: dict[str, int] = {}
        missing = []
        for lang in sorted({PIVOT, *languages}):
            token_id = tokenizer.convert_tokens_to_ids(LANG_CODES[lang])
            if token_id is None or token_id == tokenizer.unk_token_id:
                missing.append(LANG_CODES[lang])
            self.ids[lang] = token_id
        if missing:
            raise UsageError(f"the tokenizer ({type(tokenizer).__name__}) has no token for the language code(s) "
                             f"{', '.join(missing)}; use an mBART tokenizer or add the codes as special tokens")
        self.language_of = {token_id: lang for lang, token_id in self.ids.items()}

    def wrap(self, token_ids: list[int], lang: str, max_length: int) -> list[int]:
        """Text token ids truncated to fit, with `</s>` and the language code placed as the format says."""
        body = token_ids[: max(max_length - 2, 0)]
        if self.code_format == "mbart50":
            return [self.ids[lang], *body, self.eos_id]
        return [*body, self.eos_id, self.ids[lang]]

    def target_language(self, label_ids: list[int]) -> str | None:
        """The target language written in one label sequence (pad/-100 already removed); None if absent."""
        if not label_ids:
            return None
        code = label_ids[0] if self.code_format == "mbart50" else label_ids[-1]
        return self.language_of.get(int(code))

    def generation_kwargs(self, target: str) -> dict[str, int | None]:
        """`generate` kwargs that make the decoder produce `target`: its code as decoder start (cc25), or
        `</s>` as decoder start and the code forced next (mbart50). Both keys are always set, so a value
        in the checkpoint's generation config can never leak in."""
        if self.code_format == "mbart50":
            return {"decoder_start_token_id": self.eos_id, "forced_bos_token_id": self.ids[target]}
        return {"decoder_start_token_id": self.ids[target], "forced_bos_token_id": None}
