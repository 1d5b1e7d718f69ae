"""The model and data flags: which checkpoint a run starts from and which data it reads, for every task family.

Kept apart from `SparseTrainingArguments` (`smc_trainer.training.arguments`), which holds the training and
sparsity flags, the task models' settings among them (GTS's sizes, the protein head's learning rate, the
translation dropouts: `ArithmeticArguments`, `ProteinArguments`, `TranslationArguments`); both are parsed together
by `HfArgumentParser` and reach `--help` the same way, each group under its title (`help_group`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class ModelArguments:
    """Which checkpoint to start from and how to load it."""

    help_group: ClassVar[str] = "Model (checkpoint and loading)"

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id or local folder of the pretrained model. Default: the recipe's checkpoint."},
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Config name or path, if not the same as model_name_or_path."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer name or path, if not the same as model_name_or_path."}
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the checkpoint."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and datasets are cached."})
    from_scratch: bool = field(
        default=False,
        metadata={"help": "Build the model from its config with random weights instead of loading pretrained ones."},
    )


@dataclass
class DataArguments:
    """Which benchmark row (recipe) to run and which data to feed it."""

    help_group: ClassVar[str] = "Recipe and data"

    recipe: str = field(
        default="quickstart",
        metadata={
            "help": "Benchmark row to run: a name from recipes/ (e.g. csqa, quickstart) or a path to a recipe YAML. "
            "The recipe sets the task, checkpoint, dataset and the paper's hyper-parameters; flags override it."
        },
    )
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id. Default: the recipe's."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset config name."})
    train_file: str | None = field(default=None, metadata={"help": "Local training file (json, jsonl or csv)."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file (json, jsonl or csv)."})
    test_file: str | None = field(default=None, metadata={"help": "Local test file (json, jsonl or csv)."})
    max_seq_length: int = field(default=128, metadata={"help": "Maximum tokens per (question, choice) input."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate evaluation sets (debugging)."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for datasets.map."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute cached preprocessing."})
    num_synthetic_examples: int = field(
        default=2000, metadata={"help": "Quickstart only: how many synthetic training questions to generate."}
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of local data in the layout the recipe's task documents (e.g. the arithmetic "
                  "CSV folders); used instead of a Hub dataset."},
    )
    # ---- arithmetic (smc_trainer/tasks/arithmetic) -------------------------------------------------
    fold: int | None = field(
        default=None,
        metadata={"help": "Arithmetic: run only this fold of a cross-validated recipe (MAWPS, ASDiv-A: 0-4). "
                  "Default: every fold, reported pooled (total correct / total problems) and per fold."},
    )
    # ---- protein (smc_trainer/tasks/protein) -------------------------------------------------------
    protein_labels: str | None = field(
        default=None,
        metadata={"help": "Protein: comma-separated class names in label-id order (e.g. cold,hot). An integer label "
                  "in the data is an index into this list; a text label must be one of the names (any case)."},
    )
    protein_tm_bins: str | None = field(
        default=None,
        metadata={"help": "Protein: ascending melting-temperature thresholds in deg C (comma-separated) that bin a "
                  "`tm` column into the classes when the data has no label: class i holds bins[i-1] <= tm < "
                  "bins[i]. The Meltome recipe's 45,80 is UNCONFIRMED (the paper gives no thresholds)."},
    )
    protein_max_residues: int = field(
        default=1022,
        metadata={"help": "Protein: longer sequences are cropped to their first N (N-terminal) residues and the "
                  "count is logged. ESM-1b and ESM-2 take at most 1022 residues + 2 special tokens."},
    )
    protein_validation_percentage: float = field(
        default=10.0,
        metadata={"help": "Protein: without a validation file, this percentage of the training set (stratified by "
                  "class, seeded) becomes the validation split used for checkpoint selection."},
    )
    # ---- translation (smc_trainer/tasks/translation) -----------------------------------------------
    train_languages: str | None = field(
        default=None,
        metadata={"help": "Translation: comma-separated languages trained to and from English, both directions mixed "
                  "(2-to-2: fr,cs; 5-to-5: fr,cs,de,gu,ja; 10-to-10: all ten). Default: the recipe's."},
    )
    eval_languages: str | None = field(
        default=None,
        metadata={"help": "Translation: comma-separated languages evaluated to and from English, whatever the "
                  "training set (default: SMC-Bench's ten, fr,cs,de,gu,ja,my,ro,ru,vi,zh = 20 directions)."},
    )
    max_source_length: int = field(
        default=128, metadata={"help": "Translation: training source tokens kept per example (codes included); "
                               "evaluation sentences are cut only at the model's position limit."}
    )
    max_target_length: int = field(
        default=128, metadata={"help": "Translation: training target tokens kept per example (codes included)."}
    )
    lang_code_format: str = field(
        default="auto",
        metadata={"help": "Translation: where the language codes go: cc25 (`X </s> <lang>`, decoder starts with the "
                  "target code: mBART-cc25), mbart50 (`<lang> X </s>`, target code forced as first token: "
                  "mBART-50), or auto (mbart50 for MBart50 tokenizers, cc25 otherwise)."},
    )
    bleu_tokenize: str = field(
        default="zh=zh,ja=char",
        metadata={"help": "Translation: sacreBLEU tokenizer per target language (LANG=NAME, comma-separated); other "
                  "targets use 13a. ja-mecab needs `pip install sacrebleu[ja]`."},
    )
