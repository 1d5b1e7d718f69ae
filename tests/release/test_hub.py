"""Sparse releases: what save_sparse_pretrained writes, the bitmask format, the model card, and the round trip
push -> load through the Hub client (network boundary stubbed by a local fake store) and a local folder."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.utils import filter_repo_objects
from safetensors.torch import load_file, save_file
from sparse_helpers import make_trainer, sparse_args, toy_dataset
from tiny_models import make_tiny
from transformers import AutoConfig, BertForSequenceClassification

import smc_trainer.release.hub as hub
from run_smc import main
from smc_trainer import MaskSet, SparseTrainer, find_targets, load_sparse_pretrained, save_sparse_pretrained
from smc_trainer.engine.masks import MASKS_NAME, REPORT_NAME
from smc_trainer.engine.selection import global_keep_masks
from smc_trainer.release.compressed import COMPRESSED_NAME, encoded_size, load_compressed, save_compressed
from smc_trainer.release.model_card import _size
from smc_trainer.release.provenance import NOT_REPRODUCED, reproduce_command, run_config_dict
from smc_trainer.runs.config import parse_run_config


class FakeHub:
    """The Hub at its network boundary: create_repo / upload_folder / snapshot_download on a local folder.

    Every call is bound to the real client method's signature, so an argument the real client would refuse
    fails here too. upload_folder filters files exactly as huggingface_hub does (`filter_repo_objects` on
    paths relative to the folder, plus the client's default ignore patterns)."""

    def __init__(self, root: Path):
        self.root = root
        self.created: list[tuple[str, bool | None]] = []
        self.uploads: list[dict] = []

    def install(self, monkeypatch) -> None:
        hub_ = self
        real = {"create_repo": HfApi.create_repo, "upload_folder": HfApi.upload_folder,
                "snapshot_download": hub.snapshot_download}

        def called_as(name, *args, **kwargs) -> dict:
            """The arguments of a call, bound to the real client's signature (TypeError on any it would refuse)."""
            bound = inspect.signature(real[name]).bind(*args, **kwargs)
            bound.apply_defaults()
            return bound.arguments

        def create_repo(*args, **kwargs):
            a = called_as("create_repo", *args, **kwargs)
            hub_.created.append((a["repo_id"], a["private"]))
            (hub_.root / a["repo_id"]).mkdir(parents=True, exist_ok=True)
            return SimpleNamespace(repo_id=a["repo_id"])

        def upload_folder(*args, **kwargs):
            a = called_as("upload_folder", *args, **kwargs)
            repo_id, folder = a["repo_id"], Path(a["folder_path"])
            assert (hub_.root / repo_id).is_dir(), f"upload to {repo_id} before create_repo"
            files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            kept = list(filter_repo_objects(files, allow_patterns=a["allow_patterns"],
                                            ignore_patterns=list(a["ignore_patterns"] or []) + [".git", ".git/*"]))
            repo = hub_.root / repo_id
            remote = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
            for rel in filter_repo_objects(remote, allow_patterns=a["delete_patterns"]) if a["delete_patterns"] else ():
                if rel not in kept:  # as huggingface_hub: a file uploaded again is replaced, not deleted
                    (repo / rel).unlink()
            for rel in kept:
                (hub_.root / repo_id / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(folder / rel, hub_.root / repo_id / rel)
            hub_.uploads.append({"repo_id": repo_id, "files": kept, "message": a["commit_message"]})
            return SimpleNamespace(repo_url=f"https://huggingface.co/{repo_id}", commit_message=a["commit_message"])

        def snapshot_download(*args, **kwargs):
            repo_id = called_as("snapshot_download", *args, **kwargs)["repo_id"]
            path = hub_.root / repo_id
            if not path.is_dir():
                raise hub.LocalEntryNotFoundError(f"{repo_id} not found")
            return str(path)

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch) -> FakeHub:
    store = FakeHub(tmp_path / "hub")
    store.install(monkeypatch)
    return store


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny BERT trained 8 steps with GMP to 50% (masks change during training), saved as a sparse release."""
    root = tmp_path_factory.mktemp("release")
    trainer = make_trainer("bert", sparse_args(root / "run", "gmp", 0.5, save_strategy="steps", save_steps=4))
    trainer.train()
    out = trainer.save_sparse_pretrained(str(root / "release"), metrics={"eval_accuracy": 0.625, "eval_loss": 0.5},
                                         compressed=True)
    return trainer, Path(out)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# ---- the bitmask format ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bitmask_format_restores_bit_identical_tensors(tmp_path, dtype):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(37, 29, generator=gen).to(dtype)
    w[torch.rand(37, 29, generator=gen) < 0.7] = 0.0
    w[0, :5] = -0.0  # signed zeros must survive: positions are chosen by bit pattern
    state = {"sparse": w, "dense_bias": torch.randn(29, generator=gen).to(dtype), "empty": torch.zeros(4, 4),
             "ids": torch.arange(6), "flags": torch.tensor([True, False])}
    save_compressed(state, str(tmp_path / "m.safetensors"))
    back = load_compressed(str(tmp_path / "m.safetensors"))
    assert back.keys() == state.keys()
    for name, t in state.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape
        as_bytes = (lambda x: x.contiguous().view(torch.uint8))  # noqa: E731
        assert torch.equal(as_bytes(back[name]), as_bytes(t)), f"{name} is not bit-identical"
    assert torch.signbit(back["sparse"][0, :5]).all()
    raw = load_file(str(tmp_path / "m.safetensors"))
    assert {"sparse.bitmask", "sparse.values", "sparse.zero_signs"} <= raw.keys() and "sparse" not in raw
    assert "dense_bias" in raw and "empty.bitmask" in raw and "empty.zero_signs" not in raw  # no -0.0 there


@pytest.mark.parametrize("sparsity, masked, ratio", [
    (0.5, False, 0.53125), (0.9, False, 0.13125),  # zeros written as +0.0
    (0.5, True, 0.546875), (0.9, True, 0.159375),  # w *= mask: negative pruned weights become -0.0
])
def test_bitmask_size_against_dense(tmp_path, sparsity, masked, ratio):
    n = 512 * 512
    w = torch.randn(n)
    pruned = torch.randperm(n)[: int(sparsity * n)]
    if masked:
        keep = torch.ones(n, dtype=torch.bool)
        keep[pruned] = False
        w = w * keep
    else:
        w[pruned] = 0
    dense, small = tmp_path / "d.safetensors", tmp_path / "s.safetensors"
    save_file({"w": w.view(512, 512)}, str(dense))
    size = save_compressed({"w": w.view(512, 512)}, str(small))
    assert encoded_size(n, n - len(pruned), 4, signed_zeros=masked) / (4 * n) == pytest.approx(ratio, abs=1e-5)
    assert size / os.path.getsize(dense) == pytest.approx(ratio, abs=0.005)  # headers are tiny
    assert torch.equal(load_compressed(str(small))["w"].view(-1).view(torch.int32), w.view(torch.int32))


def test_load_compressed_rejects_other_files(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a smc_trainer.bitmask file"):
        load_compressed(str(tmp_path / "plain.safetensors"))


# ---- what a release holds ----------------------------------------------------------------------


def test_release_loads_with_plain_from_pretrained_and_carries_its_sparsity(trained):
    trainer, out = trained
    for name in ("model.safetensors", "config.json", MASKS_NAME, REPORT_NAME, hub.RUN_CONFIG_NAME, hub.CARD_NAME,
                 hub.METRICS_NAME, COMPRESSED_NAME, "sparse_state.json"):
        assert (out / name).is_file(), name
    plain = BertForSequenceClassification.from_pretrained(str(out))
    assert_same_state(_state(plain), _state(trainer.model))
    masks = load_file(str(out / MASKS_NAME))
    assert masks.keys() == trainer.masks.masks.keys()

    sparsity = AutoConfig.from_pretrained(str(out)).sparsity  # the metadata survives a config round trip
    zeros = sum(int((~m).sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert sparsity["method"] == "gmp" and sparsity["target_sparsity"] == 0.5 and sparsity["phase"] == "during"
    assert sparsity["achieved_sparsity"] == pytest.approx(zeros / total) and zeros == round(0.5 * total)
    assert sparsity["scope"]["prune_embeddings"] is True and sparsity["distribution"] == "global"
    assert sparsity["total_parameters"] == sum(p.numel() for p in plain.parameters())
    name = next(iter(masks))
    assert sparsity["layers"][name] == pytest.approx(float((~masks[name]).float().mean()), abs=1e-6)
    assert_same_state(load_compressed(str(out / COMPRESSED_NAME)), load_file(str(out / "model.safetensors")))


def test_model_card_is_generated_from_the_run(trained):
    trainer, out = trained
    card = ModelCard.load(str(out / hub.CARD_NAME))
    assert card.data.library_name == "transformers"
    assert {"sparse", "pruning", "smc-bench", "gmp"} <= set(card.data.tags)
    text = card.text
    rows = [line for line in text.splitlines() if line.startswith("| `") and " / " in line and "x" in line]
    assert len(rows) == len(trainer.masks.masks)  # one per-layer row per prunable weight
    # every row against the saved files: kept from the masks, measured sparsity from the weights
    masks, weights = load_file(str(out / MASKS_NAME)), load_file(str(out / "model.safetensors"))
    for name, mask in masks.items():
        kept, total, nonzero = int(mask.sum()), mask.numel(), int(torch.count_nonzero(weights[name]))
        shape = "x".join(map(str, mask.shape))
        assert (f"| `{name}` | {shape} | {kept:,} / {total:,} | {1 - kept / total:.4f} | {1 - nonzero / total:.4f} |"
                in rows), name
    zeros = sum(int((weights[n] == 0).sum()) for n in masks)
    total = sum(m.numel() for m in masks.values())
    assert f"| achieved sparsity (zeros in the weights) | {zeros / total:.4f} |" in text
    assert "| method | `gmp` (during) |" in text and "| target sparsity | 0.5000 |" in text
    assert "| eval_accuracy | 0.6250 |" in text and "| eval_loss | 0.5000 |" in text
    assert "BertForSequenceClassification.from_pretrained" in text
    dense, small = (os.path.getsize(out / n) for n in ("model.safetensors", COMPRESSED_NAME))
    assert f"`model.sparse.safetensors` is {_size(small)} against {_size(dense)}" in text  # measured, not assumed
    assert f"({small / dense:.3f}x)" in text and small < dense
    assert "Trained through the Python API" in text  # no recipe behind a bare SparseTrainer


def test_card_metadata_names_hub_base_model_and_dataset(tmp_path):
    trainer = make_trainer("bert", sparse_args(tmp_path / "run", "omp_before", 0.5, max_steps=1))
    trainer.train()
    config = parse_run_config(["--recipe", "csqa", "--output_dir", str(tmp_path / "x"), "--use_cpu",
                               "--sparse_method", "omp_before", "--sparsity", "0.5"])
    trainer.save_sparse_pretrained(str(tmp_path / "out"), run_config=config)
    card = ModelCard.load(str(tmp_path / "out" / hub.CARD_NAME))
    assert card.data.base_model == config.model_args.model_name_or_path  # the recipe's Hub checkpoint
    assert card.data.datasets == [config.data_args.dataset_name]
    assert f"- base checkpoint: {config.model_args.model_name_or_path}\n" in card.text
    assert f"- data: {config.data_args.dataset_name}\n" in card.text
    assert f"- recipe: `csqa` (task `{config.recipe.task}`, metric `{config.recipe.metric}`)" in card.text
    assert "python run_smc.py --recipe csqa --use_cpu --sparse_method omp_before --sparsity 0.5" in card.text


# ---- provenance ------------------------------------------------------------------------------


def _reproducible_fields(config) -> dict:
    """Every argument value of `config` except where results go and Hub settings (NOT_REPRODUCED)."""
    out = {}
    for part in (config.model_args, config.data_args, config.training_args):
        for f in dataclasses.fields(part):
            if f.init and f.name not in NOT_REPRODUCED and not f.name.startswith("_"):
                out[f.name] = getattr(part, f.name)
    return out


def test_reproduce_command_parses_back_to_the_same_run_and_leaks_no_token(tmp_path):
    config = parse_run_config([
        "--model_name_or_path", "tiny", "--max_steps", "7", "--output_dir", str(tmp_path), "--sparse_method", "rigl",
        "--sparsity", "0.36", "--use_cpu", "--no_prune_embeddings", "--lr_scheduler_kwargs", '{"power": 2.0}',
        "--learning_rate=3e-05", "--push_to_hub", "--hub_model_id", "me/x", "--hub_token", "hf_secret"])
    command = reproduce_command(config)
    assert command[:4] == ["python", "run_smc.py", "--recipe", "quickstart"]
    again = parse_run_config(command[2:])
    assert _reproducible_fields(again) == _reproducible_fields(config)
    dumped = json.dumps(run_config_dict(config))
    assert "hf_secret" not in dumped and "hf_secret" not in " ".join(command)
    assert "--output_dir" not in command and "--hub_model_id" not in command


def test_reproduce_command_follows_sweep_and_stage_overrides(tmp_path):
    """Overrides applied in code (sweep grid, pipeline stages, folds) are in the command; the last value wins."""
    base = parse_run_config(["--sparse_method", "gmp", "--sparsity", "0.59", "--no_prune_embeddings",
                             "--output_dir", str(tmp_path)])
    stage = base.with_training(sparse_method="lth", sparsity=0.36, prune_embeddings=True, resume_from_checkpoint=None)
    command = reproduce_command(stage)
    assert command.count("--sparse_method") == 1 and command.count("--sparsity") == 1
    again = parse_run_config(command[2:])
    assert _reproducible_fields(again) == _reproducible_fields(stage)
    assert again.training_args.prune_embeddings is True and again.training_args.sparse_method == "lth"
    assert reproduce_command(dataclasses.replace(stage, flags=None)) is None  # the Python API states no command


# ---- the round trips -----------------------------------------------------------------------------


def test_push_then_load_round_trip_through_the_hub_client(trained, fake_hub):
    trainer, out = trained
    (out / "checkpoint-9").mkdir(exist_ok=True)
    (out / "checkpoint-9" / "optimizer.pt").write_bytes(b"x")
    (out / "training_args.bin").write_bytes(b"pickle")
    hub.push_sparse_folder(str(out), "me/tiny-gmp", token="hf_test", private=True)
    assert fake_hub.created == [("me/tiny-gmp", True)]
    pushed = set(fake_hub.uploads[-1]["files"])
    assert {"model.safetensors", MASKS_NAME, REPORT_NAME, "README.md", "config.json", hub.RUN_CONFIG_NAME} <= pushed
    assert not any(f.startswith("checkpoint-") or f.endswith(".bin") for f in pushed)
    assert "gmp at sparsity 0.5000" in fake_hub.uploads[-1]["message"]

    loaded = hub.load_sparse_pretrained("me/tiny-gmp")
    assert type(loaded.model) is BertForSequenceClassification  # the class named in config.json
    assert_same_state(_state(loaded.model), _state(trainer.model))
    assert loaded.masks.keys() == trainer.masks.masks.keys()
    assert all(torch.equal(loaded.masks[n], trainer.masks.masks[n]) for n in loaded.masks)
    assert loaded.metrics == {"eval_accuracy": 0.625, "eval_loss": 0.5}
    assert loaded.report == json.loads((out / REPORT_NAME).read_text())
    assert loaded.run_config["training_args"]["sparse_method"] == "gmp"


def test_a_new_push_removes_the_release_files_it_no_longer_has_and_keeps_others(trained, fake_hub, tmp_path):
    """A stale compressed copy or mask file from an earlier push never sits beside newer weights; files the
    release does not own (a user's notes in the repository) are left alone."""
    _, out = trained
    hub.push_sparse_folder(str(out), "me/tiny-gmp", token="hf_test")
    repo = fake_hub.root / "me/tiny-gmp"
    assert (repo / COMPRESSED_NAME).is_file() and (repo / MASKS_NAME).is_file()
    (repo / "notes.md").write_text("mine")
    second = tmp_path / "second"
    shutil.copytree(out, second)
    (second / COMPRESSED_NAME).unlink()  # re-saved without --save_compressed
    hub.push_sparse_folder(str(second), "me/tiny-gmp", token="hf_test")
    assert not (repo / COMPRESSED_NAME).exists()
    assert (repo / MASKS_NAME).read_bytes() == (second / MASKS_NAME).read_bytes()
    assert (repo / "notes.md").read_text() == "mine"
    assert_same_state(_state(hub.load_sparse_pretrained("me/tiny-gmp").model),
                      _state(hub.load_sparse_pretrained(str(second)).model))


def test_an_uncompressed_resave_drops_the_stale_bitmask_copy(trained, tmp_path):
    trainer, out = trained
    again = tmp_path / "again"
    shutil.copytree(out, again)
    assert (again / COMPRESSED_NAME).is_file()
    trainer.save_sparse_pretrained(str(again), compressed=False, overwrite=True)
    assert not (again / COMPRESSED_NAME).exists()
    assert COMPRESSED_NAME not in (again / hub.CARD_NAME).read_text()


def test_trainer_release_into_another_folder_never_replaces_files(trained, tmp_path):
    trainer, _ = trained
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"my dense model")
    with pytest.raises(FileExistsError, match=r"mine is not empty .*model.safetensors"):
        trainer.save_sparse_pretrained(str(mine))
    assert sorted(p.name for p in mine.iterdir()) == ["model.safetensors"]
    assert (mine / "model.safetensors").read_bytes() == b"my dense model"
    trainer.save_sparse_pretrained(str(mine), overwrite=True)
    assert_same_state(_state(hub.load_sparse_pretrained(str(mine)).model), _state(trainer.model))


def test_local_folder_round_trip_and_compressed_only_release(trained, tmp_path):
    trainer, out = trained
    loaded = hub.load_sparse_pretrained(str(out))
    assert_same_state(_state(loaded.model), _state(trainer.model))
    assert loaded.masks.keys() == trainer.masks.masks.keys()
    assert all(torch.equal(loaded.masks[n], trainer.masks.masks[n]) for n in loaded.masks)
    assert loaded.metrics == {"eval_accuracy": 0.625, "eval_loss": 0.5}

    slim = tmp_path / "slim"
    shutil.copytree(out, slim)
    (slim / "model.safetensors").unlink()  # ship only the bitmask file
    from_bits = hub.load_sparse_pretrained(str(slim))
    assert_same_state(_state(from_bits.model), _state(trainer.model))


def test_loaded_masks_keep_training_sparse(trained, tmp_path):
    trainer, out = trained
    ckpt = hub.load_sparse_pretrained(str(out))
    more = SparseTrainer(model=ckpt.model, args=sparse_args(tmp_path / "more", "omp_before", 0.5, max_steps=2),
                         train_dataset=toy_dataset(), initial_masks=ckpt.masks)
    more.train()
    assert all(torch.equal(more.masks.masks[n], ckpt.masks[n]) for n in ckpt.masks)
    hub.check_masks(more.model, ckpt.masks)  # every pruned weight still exactly zero


def test_load_refuses_masks_that_do_not_fit(trained, tmp_path):
    _, out = trained
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    masks = load_file(str(bad / MASKS_NAME))
    name = next(iter(masks))
    masks[name] = ~masks[name]
    save_file(masks, str(bad / MASKS_NAME))
    with pytest.raises(ValueError, match="non-zero where its mask prunes it"):
        hub.load_sparse_pretrained(str(bad))


def test_offline_load_of_an_uncached_id_names_it_and_the_local_alternative(tmp_path):
    assert constants.HF_HUB_OFFLINE  # the test environment never reaches the network
    with pytest.raises(OSError, match=r"'someone/not-cached'.*local folder|'someone/not-cached'.*path of a folder"):
        hub.load_sparse_pretrained("someone/not-cached", cache_dir=str(tmp_path / "cache"))


# ---- --push_to_hub -----------------------------------------------------------------------------


def _tiny_cli(out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", "tiny", "--max_steps", "3", "--output_dir", str(out), "--report_to", "none",
            "--num_synthetic_examples", "48", "--max_eval_samples", "16", "--use_cpu", "--disable_tqdm", "true",
            "--log_level", "warning", "--dense_cache_dir", str(out.parent / "cache"), "--sparse_method",
            "omp_before", "--sparsity", "0.5", *extra]


def test_cli_push_to_hub_uploads_the_final_run_once(tmp_path, fake_hub):
    out = tmp_path / "run"
    metrics = main(_tiny_cli(out, "--push_to_hub", "--hub_model_id", "me/run", "--hub_token", "hf_t",
                             "--save_steps", "2", "--save_strategy", "steps"))
    assert [u["repo_id"] for u in fake_hub.uploads] == ["me/run"]  # stages never pushed on their own
    assert not any(f.startswith("checkpoint-") for f in fake_hub.uploads[0]["files"])
    loaded = hub.load_sparse_pretrained("me/run")
    assert loaded.metrics["eval_accuracy"] == metrics["eval_accuracy"]
    assert_same_state(_state(loaded.model), _state(type(loaded.model).from_pretrained(str(out))))
    assert all(torch.equal(m, load_file(str(out / MASKS_NAME))[n]) for n, m in loaded.masks.items())
    card = ModelCard.load(str(fake_hub.root / "me/run" / "README.md"))
    assert 'from_pretrained("me/run")' in card.text
    command = loaded.run_config["command"]
    assert "--sparse_method omp_before" in command and "hub" not in command


@pytest.mark.parametrize("flags, message", [
    (["--hub_token", "t"], "--push_to_hub needs --hub_model_id"),
    (["--hub_model_id", "me/x"], "needs a Hub token"),
])
def test_push_flags_are_checked_before_training(tmp_path, monkeypatch, flags, message):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(ValueError, match=message):
        main(_tiny_cli(tmp_path / "run", "--push_to_hub", *flags))
    assert not (tmp_path / "run").exists()


def test_push_to_hub_offline_is_refused_early(tmp_path, trained):
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE=1"):
        main(_tiny_cli(tmp_path / "run", "--push_to_hub", "--hub_model_id", "me/x", "--hub_token", "t"))
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE=1"):
        main(["push", str(trained[1]), "--hub_model_id", "me/x", "--hub_token", "t"])


def test_a_sweep_refuses_push_to_hub(tmp_path):
    with pytest.raises(ValueError, match="run_smc.py push"):
        main(["sweep", "--recipes", "quickstart", "--sweep_dir", str(tmp_path), "--push_to_hub", "--hub_model_id",
              "me/x"])


def test_trainer_push_to_hub_uploads_the_sparse_release(tmp_path, fake_hub):
    args = sparse_args(tmp_path / "run", "omp_before", 0.5, max_steps=2, push_to_hub=True, hub_model_id="me/api",
                       hub_token="hf_t")
    trainer = make_trainer("bert", args)
    assert [repo for repo, _ in fake_hub.created] == ["me/api"]  # Trainer.__init__ reaches the repo first
    trainer.train()
    trainer.push_to_hub()
    files = set(fake_hub.uploads[-1]["files"])
    assert {MASKS_NAME, REPORT_NAME, "README.md", hub.RUN_CONFIG_NAME} <= files
    loaded = hub.load_sparse_pretrained("me/api")
    assert_same_state(_state(loaded.model), _state(trainer.model))


def test_push_command_uploads_a_finished_run(trained, fake_hub):
    _, out = trained
    main(["push", str(out), "--hub_model_id", "me/later", "--hub_token", "hf_t"])
    assert fake_hub.uploads[-1]["repo_id"] == "me/later"
    with pytest.raises(ValueError, match="not a sparse release"):
        hub.push_sparse_folder(str(out / "nothing"), "me/none", token="t")


def test_save_sparse_pretrained_without_a_trainer(tmp_path):
    model = make_tiny("bert")
    masks = MaskSet(find_targets(model))
    masks.set_masks(global_keep_masks({t.name: t.param.detach().abs() for t in masks.targets}, 0.25))
    save_sparse_pretrained(model, masks, str(tmp_path / "out"))
    loaded = load_sparse_pretrained(str(tmp_path / "out"))
    assert_same_state(_state(loaded.model), _state(model))
    sparsity = json.loads((tmp_path / "out" / "config.json").read_text())["sparsity"]
    assert sparsity["method"] == "external" and sparsity["achieved_sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert "external" not in ModelCard.load(str(tmp_path / "out" / "README.md")).data.tags


def test_save_sparse_pretrained_never_replaces_files_silently(tmp_path):
    model = make_tiny("bert")
    masks = MaskSet(find_targets(model))
    masks.set_masks(global_keep_masks({t.name: t.param.detach().abs() for t in masks.targets}, 0.5))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    (mine / "model.safetensors").write_bytes(b"my dense model")
    with pytest.raises(FileExistsError, match=r"mine is not empty .*README.md.*overwrite=True"):
        save_sparse_pretrained(model, masks, str(mine))
    assert (mine / "README.md").read_text() == "my notes"
    assert (mine / "model.safetensors").read_bytes() == b"my dense model"
    assert sorted(p.name for p in mine.iterdir()) == ["README.md", "model.safetensors"]  # nothing written at all

    save_sparse_pretrained(model, masks, str(tmp_path / "new"))
    with pytest.raises(FileExistsError):  # a second save over a release is refused as well
        save_sparse_pretrained(model, masks, str(tmp_path / "new"))
    save_sparse_pretrained(model, masks, str(mine), overwrite=True)  # asked for: replaced
    assert_same_state(_state(load_sparse_pretrained(str(mine)).model), _state(model))


def test_card_escapes_pipes_in_table_cells():
    from smc_trainer.release.model_card import CardFacts, model_card

    sparsity = {"method": "gmp", "phase": "during", "target_sparsity": 0.5, "achieved_sparsity": 0.5,
                "mask_sparsity": 0.5, "distribution": "global", "prunable_parameters": 10, "total_parameters": 12,
                "scope": {"prune_exclude": "pooler|classifier"}}
    text = model_card(CardFacts(sparsity=sparsity, layers=[])).text
    row = next(line for line in text.splitlines() if line.startswith("| include / exclude regex"))
    assert "pooler\\|classifier" in row and row.replace("\\|", "").count("|") == 3  # still two cells


def test_the_cards_command_reproduces_the_run(tmp_path):
    first = tmp_path / "first"
    main(_tiny_cli(first, "--learning_rate", "2e-3", "--no_prune_heads"))
    command = json.loads((first / hub.RUN_CONFIG_NAME).read_text())["command"]
    assert f"{command} --output_dir my_run" in (first / "README.md").read_text()
    again = tmp_path / "again"
    main([*shlex.split(command)[2:], "--output_dir", str(again), "--dense_cache_dir", str(tmp_path / "cache")])
    assert_same_state(load_file(str(again / "model.safetensors")), load_file(str(first / "model.safetensors")))
