"""Invariant 5 under DDP: `accelerate launch` with 2 CPU processes (gloo) ends every process with the
same masks and weights, bit for bit, at the exact sparsity.

One launch runs all cases (tests/ddp_worker.py) to pay the process start-up once. Each process
trains on its own shard of the data from its own random initialisation, so identical results mean
DDP synchronised the weights before the first mask and the methods read all-reduced gradients and
rank-independent seeds. Two planted faults (random scores seeded by rank, SNIP gradients taken
through the unsynchronised model) must be caught, which shows the comparison can fail.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import CASES, GTS_FIXTURE, KD_SCALE, PIPELINE_CASES, SPARSITY, TEACHER_SEED, TRAINER_CASES
from safetensors.torch import load_file

from smc_trainer.runs.dense_cache import COMPLETE, INIT_WEIGHTS

WORKER = Path(__file__).resolve().parents[1] / "ddp_worker.py"
REPO = WORKER.parent.parent
WORKER_TIMEOUT_S = 200
LAUNCH_TIMEOUT_S = 300
FAULTS = [c for c in TRAINER_CASES if c.startswith("fault_")]
SOUND_TRAINER_CASES = [c for c in TRAINER_CASES if c not in FAULTS]
EXPECTED_STAGES = {"omp_after": {"dense", "omp_after"}, "random_after": {"random_after"},  # later: dense cache hits
                   "lth": {"round-01", "round-02"}, "lrr": {"round-01", "round-02"},
                   "gts_kd": {"dense", "gts_kd"}, "gts_lora_kd": {"gts_lora_kd"}}  # GTS: a cache of its own
ONE_STEP_CASES = {"kd_scale"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path) -> tuple[int, str]:
    """Run every case in one 2-process launch; (exit code, combined output). On a hang the workers print their
    stacks and exit (`--timeout`); past LAUNCH_TIMEOUT_S the whole process group is killed, workers included."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(WORKER), "--out", str(out), "--cases", ",".join(CASES),
           "--timeout", str(WORKER_TIMEOUT_S)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           # the package of this checkout, not whichever one is installed (a git worktree beside the install)
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return -1, f"killed after {LAUNCH_TIMEOUT_S}s\n{output}"
    return proc.returncode, output


def write_gts_fixture(out: Path) -> None:
    """The tiny GTS encoder, CV data and recipe the gts_* cases read (written once, before the launch)."""
    from arithmetic_helpers import write_cv_data, write_cv_recipe, write_encoder

    root = out / GTS_FIXTURE
    paths = {"encoder": write_encoder(root / "encoder"), "data": str(write_cv_data(root / "data")),
             "recipe": write_cv_recipe(root / "cv_tiny.yaml")}
    (root / "paths.json").write_text(json.dumps(paths))


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    write_gts_fixture(out)
    for _attempt in range(2):  # the free port can be taken between probe and bind; retry once
        code, output = launch(out)
        if code == 0 or "address already in use" not in output.lower():
            break
    if code != 0:
        pytest.fail(f"2-process launch failed (exit {code}); output tail:\n{failure_tail(output)}")
    return out


def failure_tail(output: str, n: int = 60) -> str:
    """The last lines of each rank's traceback (or hang stacks), then the last lines of everything."""
    lines = output.splitlines()
    per_rank = [ln for ln in lines if ln.startswith(("[rank0]", "[rank1]")) and "Warning" not in ln]
    stacks = [ln for ln in lines if ln.startswith(("Timeout", "Thread", "  File"))]
    return "\n".join(per_rank[-n:] + ["..."] + stacks[-n:] + ["..."] + lines[-n // 2 :])


def ranks(out: Path, case: str, stage: str) -> list[tuple[dict[str, torch.Tensor], dict]]:
    """(tensors, record) of rank 0 and rank 1 for one training stage of one case."""
    found = []
    for r in (0, 1):
        base = out / f"{case}.{stage}.rank{r}"
        record = Path(f"{base}.json")
        assert record.is_file(), f"rank {r} wrote nothing for {case}/{stage}"
        found.append((load_file(f"{base}.safetensors"), json.loads(record.read_text())))
    return found


def stages(out: Path, case: str) -> set[str]:
    return {p.name[len(case) + 1 : -len(".rank0.json")] for p in out.glob(f"{case}.*.rank0.json")}


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if k.startswith(prefix) and not torch.equal(a[k], b[k])]


def all_stages() -> list[tuple[str, str]]:
    return [(c, c) for c in SOUND_TRAINER_CASES] + [(c, s) for c in PIPELINE_CASES for s in sorted(EXPECTED_STAGES[c])]


@pytest.mark.parametrize("case,stage", all_stages())
def test_processes_end_with_identical_masks_and_weights_at_exact_sparsity(ddp_out, case, stage):
    (t0, r0), (t1, r1) = ranks(ddp_out, case, stage)
    assert r0["world_size"] == r1["world_size"] == 2 and r0["wrapped"] == "DistributedDataParallel"
    assert r0["masks_on_trained_tensors"] and r1["masks_on_trained_tensors"]
    assert r0["data_digests"] != r1["data_digests"], "both processes saw the same batches: not data parallel"
    assert differing(t0, t1, "mask/") == [], "masks differ between processes"
    assert differing(t0, t1, "weight/") == [], "weights differ between processes"
    for r in (r0, r1):
        assert r["kept"] == r["expected_kept"], f"rank {r['rank']}: kept {r['kept']}, expected {r['expected_kept']}"
        assert r["nonzero"] <= r["kept"]
    masks = {k.removeprefix("mask/"): m for k, m in t0.items() if k.startswith("mask/")}
    revived = [n for n, m in masks.items() if bool((t0[f"weight/{n}"][~m] != 0).any())]
    assert revived == [], f"pruned weights are non-zero: {revived[:3]}"
    if r0["method"] != "dense":
        assert sum(k.startswith("mask/") for k in t0) > 0


@pytest.mark.parametrize("case", sorted(set(SOUND_TRAINER_CASES) - ONE_STEP_CASES))
def test_schedules_count_optimizer_steps_and_methods_read_all_reduced_gradients(ddp_out, case):
    (_, r0), (_, r1) = ranks(ddp_out, case, case)
    assert r0["sparse_step"] == r0["global_step"] == 6  # 6 optimizer steps of 2 micro-batches each
    assert r0["grad_digests"] == r1["grad_digests"], "the method read different gradients on the two processes"
    method = TRAINER_CASES[case]
    reads_gradients = method["sparse_method"] in ("snip", "rigl") or method.get("rigl_init_method") == "snip"
    assert bool(r0["grad_digests"]) == reads_gradients
    if method["sparse_method"] in ("rigl", "set"):
        assert r0["mask_events"] == 3  # the initial mask + updates at steps 2 and 4


def test_lora_runs_train_adapters_on_a_frozen_base_identically(ddp_out):
    """--peft lora under DDP: the masked adapters (identical on both processes) really trained, the frozen base
    kept its pruned zeros, and SNIP scored the frozen base with all-reduced gradients (same masks)."""
    for case in ("lora_gmp", "lora_snip", "lora_gmp_kd"):
        (t0, r0), (t1, _) = ranks(ddp_out, case, case)
        lora_b = [k for k in t0 if k.startswith("weight/") and "lora_B" in k]
        assert lora_b and any(bool(t0[k].abs().sum() > 0) for k in lora_b), f"{case}: adapters never trained"
        assert differing(t0, t1, "weight/") == [] and differing(t0, t1, "mask/") == []
        assert r0["kept"] == r0["expected_kept"]


def replay_kd_step_in_one_process(ddp_out: Path, tmp_path: Path, hardness: float) -> dict[str, torch.Tensor]:
    """The kd_scale step in one process: the 16 examples both DDP processes trained on, as 2 micro-batches of 8
    (micro-batch j = rank 0's j-th + rank 1's j-th), from the same initial weights, teacher and mask."""
    from datasets import Dataset
    from ddp_worker import kd_scale_trainer_kwargs
    from sparse_helpers import InOrderTrainer, sparse_args

    (t0, _), (t1, _) = ranks(ddp_out, "kd_scale", "kd_scale")
    micro = sorted({int(k.split("/")[1]) for k in t0 if k.startswith("input/")})
    assert micro == [0, 1]
    columns = {k: [] for k in ("input_ids", "labels")}
    for j in micro:
        for t in (t0, t1):
            for k in columns:
                columns[k].extend(t[f"input/{j}/{k}"].tolist())

    config = {**KD_SCALE, "distill_hardness": hardness}
    args = sparse_args(tmp_path / f"replay-{hardness}", config.pop("sparse_method"), SPARSITY,
                       per_device_train_batch_size=8, gradient_accumulation_steps=2, **config)
    trainer = InOrderTrainer(args=args, train_dataset=Dataset.from_dict(columns), **kd_scale_trainer_kwargs(rank=0))
    trainer.train()
    return {f"weight/{n}": p.detach() for n, p in trainer.model.named_parameters()}


def test_a_distillation_step_under_ddp_equals_one_process_on_the_union_of_the_batches(ddp_out, tmp_path):
    """Task + KD loss (hardness 0.5, T = 2) under DDP with gradient accumulation: one plain SGD step lands where one
    process lands on the same 16 examples, so both terms are normalized alike by DDP's averaging and the
    Trainer's accumulation. The teacher is the same seed on both processes and DDP never wraps it."""
    (t0, r0), _ = ranks(ddp_out, "kd_scale", "kd_scale")
    assert r0["global_step"] == 1 and TEACHER_SEED != 1000
    replayed = replay_kd_step_in_one_process(ddp_out, tmp_path, hardness=0.5)
    names = [k for k in replayed if k in t0]
    assert len(names) == len(replayed) > 0
    moved = [k for k in names if not torch.equal(t0[k], kd_scale_initial()[k])]
    assert len(moved) > len(names) // 2, "the step changed almost nothing: the comparison would be vacuous"
    for k in names:
        torch.testing.assert_close(replayed[k], t0[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    # the comparison can fail: weighting the KD term differently (as a normalization bug would) is caught
    other = replay_kd_step_in_one_process(ddp_out, tmp_path, hardness=0.75)
    assert any(not torch.allclose(other[k], t0[k], rtol=1e-5, atol=1e-6) for k in names)


def kd_scale_initial() -> dict[str, torch.Tensor]:
    from ddp_worker import kd_scale_trainer_kwargs

    model = kd_scale_trainer_kwargs(rank=0)["model"]
    return {f"weight/{n}": p.detach() for n, p in model.named_parameters()}


def test_gts_distillation_runs_under_ddp(ddp_out):
    """GTS + GMP + KD, alone and with LoRA: the dense stage trained under DDP is the teacher; both processes end
    with the same masks and weights (the invariant test above) and the adapters of the LoRA run trained."""
    for case in ("gts_kd", "gts_lora_kd"):
        (t0, r0), (t1, _) = ranks(ddp_out, case, case)
        assert r0["method"] == "gmp" and r0["kept"] == r0["expected_kept"]
        assert differing(t0, t1, "weight/") == []
    (t0, _), _ = ranks(ddp_out, "gts_lora_kd", "gts_lora_kd")
    lora_b = [k for k in t0 if k.startswith("weight/") and "lora_B" in k]
    assert lora_b and any(bool(t0[k].abs().sum() > 0) for k in lora_b), "the GTS adapters never trained"


def test_pipeline_stages_share_one_dense_cache_entry(ddp_out):
    for case, expected in EXPECTED_STAGES.items():
        assert stages(ddp_out, case) == expected, f"{case}: stages trained {stages(ddp_out, case)}"
    for cache in ("cache", "cache_gts"):
        entries = [p for p in (ddp_out / cache).iterdir() if p.is_dir()]
        assert len(entries) == 1 and (entries[0] / COMPLETE).is_file() and (entries[0] / INIT_WEIGHTS).is_file()
    (t_dense, _), _ = ranks(ddp_out, "omp_after", "dense")
    assert not any(k.startswith("mask/") for k in t_dense)


@pytest.mark.parametrize("fault", FAULTS)
def test_planted_rank_dependence_is_detected(ddp_out, fault):
    (t0, r0), (t1, r1) = ranks(ddp_out, fault, fault)
    assert differing(t0, t1, "mask/"), f"{fault}: the planted divergence went unnoticed"
    assert r0["kept"] == r1["kept"] == r0["expected_kept"]  # each process is exact; they just disagree
    if fault == "fault_local_snip":
        assert r0["grad_digests"] != r1["grad_digests"]


def test_snip_scoring_batches_leave_the_training_stream_alone(ddp_out):
    for r in (0, 1):
        (_, snip), (_, gmp) = ranks(ddp_out, "snip", "snip")[r], ranks(ddp_out, "gmp", "gmp")[r]
        assert snip["data_digests"] == gmp["data_digests"]
