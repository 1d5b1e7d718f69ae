"""`python tests/kill_during_save.py RUN_SMC_FLAGS...`: run_smc.py, optionally stopped in the middle of a save.

With SMC_TEST_HANG_AT_STEP=N and SMC_TEST_HANG_FLAG=PATH in the environment, the checkpoint save at
optimizer step N writes the model, masks and method state, then (before the optimizer, scheduler, RNG
and trainer state) touches PATH and waits forever, so tests/training/test_checkpoints.py can SIGKILL it at a
known point of the save. The hook lives here, not in the library.
"""

from __future__ import annotations

import os
import sys
import time

import torch

from run_smc import main
from smc_trainer.training.trainer import SparseTrainer


def hang_during_save(step: int, flag: str) -> None:
    original = SparseTrainer._save_optimizer_and_scheduler

    def save_then_hang(self, output_dir):
        if self.state.global_step == step:
            with open(flag, "w") as fh:
                fh.write(output_dir)
            while True:
                time.sleep(60)
        return original(self, output_dir)

    SparseTrainer._save_optimizer_and_scheduler = save_then_hang


if __name__ == "__main__":
    torch.set_num_threads(1)  # as tests/conftest.py: the same kernels, so the same bits, in and out of pytest
    if os.environ.get("SMC_TEST_HANG_AT_STEP"):
        hang_during_save(int(os.environ["SMC_TEST_HANG_AT_STEP"]), os.environ["SMC_TEST_HANG_FLAG"])
    main(sys.argv[1:])
