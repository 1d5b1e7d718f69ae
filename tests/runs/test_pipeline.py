"""Multi-stage runs: LTH/LRR rounds, after-methods from the cached dense fine-tune, validation-only selection."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file
from sparse_helpers import tiny_config

from smc_trainer.engine.masks import MASKS_NAME
from smc_trainer.engine.selection import keep_count
from smc_trainer.runs import pipeline
from smc_trainer.runs.dense_cache import INIT_WEIGHTS, DenseCache


@pytest.fixture
def start_weights(monkeypatch):
    """Records, for every fine-tune, the model's weights when its SparseTrainer is built (before masking)."""
    seen: list[dict] = []

    class Recording(pipeline.SparseTrainer):
        def __init__(self, model=None, args=None, *a, **kw):
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            seen.append({"dir": args.output_dir, "weights": weights, "masks": kw.get("initial_masks"),
                         "eval_dataset": kw.get("eval_dataset")})
            super().__init__(model, args, *a, **kw)

    monkeypatch.setattr(pipeline, "SparseTrainer", Recording)
    return seen


def _weights(path: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(path, "model.safetensors") if os.path.isdir(path) else path)


@pytest.mark.parametrize("method", ["lth", "lrr"])
def test_iterative_rounds_hit_exact_sparsity_and_rewind_only_for_lth(tmp_path, start_weights, method):
    config = tiny_config(tmp_path, method, 0.488)
    outcomes = pipeline.run_iterative(config, str(tmp_path / "chain"))
    assert [o.round for o in outcomes] == [1, 2, 3]
    dense_dir, _ = pipeline.run_dense(config)
    init = _weights(os.path.join(dense_dir, INIT_WEIGHTS))
    rounds = [s for s in start_weights if "round-" in s["dir"]]
    previous_dir, previous_mask = dense_dir, None
    for k, (outcome, seen) in enumerate(zip(outcomes, rounds, strict=True), start=1):
        masks = load_file(os.path.join(outcome.output_dir, MASKS_NAME))
        total = sum(m.numel() for m in masks.values())
        kept = sum(int(m.sum()) for m in masks.values())
        assert kept == keep_count(0.8**k, total), f"round {k}: kept {kept} of {total}"
        assert outcome.target_sparsity == pytest.approx(1 - 0.8**k, abs=1e-12)
        assert {n: m for n, m in seen["masks"].items()}.keys() == masks.keys()
        if previous_mask is not None:  # nested: a pruned weight never comes back
            assert all(not bool((masks[n] & ~previous_mask[n]).any()) for n in masks)
        start = seen["weights"]
        trained_before = _weights(previous_dir)
        kept_equal_init = all(torch.equal(start[n][masks[n]], init[n][masks[n]]) for n in masks)
        kept_equal_prev = all(torch.equal(start[n][masks[n]], trained_before[n][masks[n]]) for n in masks)
        if method == "lth":  # rewound: kept weights are the pretrained values, the head its initial values
            assert kept_equal_init and all(torch.equal(start[n], init[n]) for n in init)
        else:  # LRR continues from the pruned fine-tuned weights
            assert kept_equal_prev and not kept_equal_init
        previous_dir, previous_mask = outcome.output_dir, masks


def test_chain_reuses_finished_rounds(tmp_path, start_weights):
    config = tiny_config(tmp_path, "lth", 0.36)
    pipeline.run_iterative(config, str(tmp_path / "chain"), rounds=1)
    n_before = len(start_weights)
    outcomes = pipeline.run_iterative(config, str(tmp_path / "chain"), rounds=2)
    assert len(outcomes) == 2 and len(start_weights) == n_before + 1  # only round 2 trained


def test_after_methods_share_one_cached_dense_fine_tune(tmp_path, start_weights):
    first = pipeline.run(tiny_config(tmp_path, "omp_after", 0.2), str(tmp_path / "omp"))[0]
    second = pipeline.run(tiny_config(tmp_path, "random_after", 0.36), str(tmp_path / "rand"))[0]
    dense_runs = [s for s in start_weights if s["dir"].endswith(".partial")]
    assert len(dense_runs) == 1, "the dense fine-tune must run once and be reused"
    dense_dir = os.path.join(tmp_path, "cache", os.listdir(tmp_path / "cache")[0].replace(".lock", ""))
    dense = _weights(dense_dir)
    for seen in start_weights[1:]:  # both after-methods start from the fine-tuned dense weights
        assert all(torch.equal(seen["weights"][n], dense[n]) for n in dense)
    assert first.mask_sparsity == pytest.approx(0.2, abs=1e-3) and second.mask_sparsity == pytest.approx(0.36, abs=1e-3)
    assert "test_accuracy" in first.metrics and "eval_accuracy" in first.metrics


def test_dense_cache_key_tracks_what_changes_the_fine_tune(tmp_path):
    cache = DenseCache(str(tmp_path))
    base = tiny_config(tmp_path, "omp_after", 0.2)
    assert cache.key(base) == cache.key(tiny_config(tmp_path, "gmp", 0.5, "--logging_steps", "7"))
    assert cache.key(base) == cache.key(base.with_training(output_dir=str(tmp_path / "elsewhere")))
    assert cache.key(base) != cache.key(base.with_training(learning_rate=3e-4))
    assert cache.key(base) != cache.key(base.with_training(seed=5))


@pytest.mark.parametrize("select_on", ["validation", "test"])
def test_selection_split_follows_select_on(tmp_path, start_weights, monkeypatch, select_on):
    bundles = []
    original = pipeline.build_task
    monkeypatch.setattr(pipeline, "build_task", lambda c: bundles.append(original(c)) or bundles[-1])
    outcome = pipeline.run(tiny_config(tmp_path, "omp_before", 0.5, "--select_on", select_on))[0]
    expected = bundles[0].eval_dataset if select_on == "validation" else bundles[0].test_dataset
    assert start_weights[0]["eval_dataset"] is expected
    assert {"eval_accuracy", "test_accuracy"} <= set(outcome.metrics)  # both always reported, separately


def test_dense_outcome_names_the_cache_entry_not_its_partial_folder(tmp_path):
    config = tiny_config(tmp_path, "dense", 0.0)
    directory, outcome = pipeline.run_dense(config)
    assert outcome.output_dir == directory and os.path.isdir(outcome.output_dir)
    assert not outcome.output_dir.endswith(".partial")
    _, again = pipeline.run_dense(config)  # a cache hit reports the same place
    assert again.output_dir == directory


def test_explicit_resume_reaches_only_the_round_that_holds_it(tmp_path, start_weights, monkeypatch):
    """--resume_from_checkpoint inside round-02 must not make round 1 resume from round 2's checkpoint."""
    resumed: dict[str, object] = {}

    def spy(args, output_dir):
        resumed[os.path.basename(output_dir)] = args.resume_from_checkpoint
        return None  # train from scratch: the point is which round was handed the path

    monkeypatch.setattr(pipeline, "_resume_point", spy)
    chain = tmp_path / "chain"
    target = str(chain / "round-02" / "checkpoint-2")
    config = tiny_config(tmp_path, "lth", 0.36, "--resume_from_checkpoint", target)
    pipeline.run_iterative(config, str(chain))
    assert {k: v for k, v in resumed.items() if k.startswith("round-")} == {"round-01": None, "round-02": target}
    assert all(v is None for k, v in resumed.items() if not k.startswith("round-"))  # nor the dense stage


@pytest.mark.parametrize("arch", ["esm", "roberta", "t5"])
def test_load_weights_reads_save_pretrained_folders_of_any_architecture(tmp_path, arch):
    """transformers renames some keys on save (ESM: LayerNorm.gamma/beta); the dense cache must still load."""
    from tiny_models import make_tiny

    source, target = make_tiny(arch, seed=0), make_tiny(arch, seed=1)
    source.save_pretrained(tmp_path)
    pipeline.load_weights(target, str(tmp_path))
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_max_steps_zero_prunes_the_dense_fine_tune_and_evaluates_it_as_is(tmp_path, start_weights):
    """`--max_steps 0` after-methods: the dense stage keeps its own budget (and the cache entry of a run without
    --max_steps), the pruned model is evaluated without one optimizer step, its weights are dense x mask."""
    config = tiny_config(tmp_path, "omp_after", 0.5, "--max_steps", "0", "--num_train_epochs", "1")
    outcome = pipeline.run(config, str(tmp_path / "omp0"))[0]
    dense_dir, dense = pipeline.run_dense(config)
    assert dense.steps == 6  # 48 examples / batch 8, one epoch: not 0 steps
    cache = DenseCache(str(tmp_path / "cache"))
    assert os.path.basename(dense_dir) == cache.key(config.with_training(max_steps=-1, sparse_method="dense",
                                                                         sparsity=0.0))
    assert outcome.steps == 0 and outcome.mask_sparsity == pytest.approx(0.5, abs=1e-3)
    assert "test_accuracy" in outcome.metrics
    pruned, masks, fine_tuned = _weights(str(tmp_path / "omp0")), load_file(str(tmp_path / "omp0" / MASKS_NAME)), \
        _weights(dense_dir)
    assert masks
    for name, mask in masks.items():
        assert torch.equal(pruned[name], fine_tuned[name] * mask), name
    untouched = [n for n in fine_tuned if n not in masks and n in pruned]
    assert untouched and all(torch.equal(pruned[n], fine_tuned[n]) for n in untouched)
