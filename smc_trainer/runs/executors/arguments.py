"""The sweep's `--executor` flags: where the fine-tunes run (this process, K local workers, Ray, Slurm)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from smc_trainer.errors import UsageError

EXECUTORS = ("local", "ray", "slurm")
SLURM_CLUSTERS = ("slurm", "local")
# flags that only one executor reads: given with another, they are refused rather than silently ignored
OWN_FLAGS = {
    "local": ("max_parallel", "gpus"),
    "ray": ("ray_address", "ray_num_cpus"),
    "slurm": ("slurm_cluster", "slurm_partition", "slurm_time_min", "slurm_mem_gb", "slurm_array_parallelism",
              "slurm_setup", "slurm_folder"),
}


@dataclass
class ExecutorArguments:
    """Where a sweep's fine-tunes run. The driver (this process) alone writes the ledger in every case."""

    executor: str = field(default="local", metadata={
        "help": "local (this machine: one run at a time, or --max_parallel K workers), ray (tasks on a Ray cluster) "
                "or slurm (jobs through submitit)."})
    max_parallel: int | None = field(default=None, metadata={
        "help": "local: how many fine-tunes run at once, each in its own process (default 1, or one per --gpus)."})
    gpus: str | None = field(default=None, metadata={
        "help": "local: comma-separated GPU ids, e.g. 0,1; each worker process sees one of them."})
    cpus_per_run: int = field(default=1, metadata={"help": "ray, slurm: CPUs each fine-tune asks for."})
    gpus_per_run: int = field(default=0, metadata={"help": "ray, slurm: GPUs each fine-tune asks for."})
    ray_address: str | None = field(default=None, metadata={
        "help": "ray: the cluster to join, 'auto' (the one `ray start` runs here) or HOST:PORT; unset starts a local "
                "Ray instance for the sweep."})
    ray_num_cpus: int | None = field(default=None, metadata={
        "help": "ray: CPUs of the local Ray instance (only without --ray_address)."})
    slurm_cluster: str = field(default="slurm", metadata={
        "help": "slurm: 'slurm' submits with sbatch; 'local' runs the same jobs as local processes (submitit's "
                "LocalExecutor, for trying a sweep without a cluster)."})
    slurm_partition: str | None = field(default=None, metadata={"help": "slurm: the partition (sbatch -p)."})
    slurm_time_min: int = field(default=24 * 60, metadata={"help": "slurm: the time limit of each job, minutes."})
    slurm_mem_gb: float | None = field(default=None, metadata={"help": "slurm: memory of each job, GB."})
    slurm_array_parallelism: int | None = field(default=None, metadata={
        "help": "slurm: at most this many jobs of one array run at once."})
    slurm_setup: str | None = field(default=None, metadata={
        "help": "slurm: shell lines run before each job, separated by ';' (e.g. 'module load cuda; "
                "source ~/venv/bin/activate')."})
    slurm_folder: str | None = field(default=None, metadata={
        "help": "slurm: where job scripts, logs and the job list go (default: SWEEP_DIR/slurm)."})

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise UsageError(f"--executor must be one of {', '.join(EXECUTORS)}; got {self.executor!r}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for executor, names in OWN_FLAGS.items():
            given = [f"--{n}" for n in names if executor != self.executor and getattr(self, n) != defaults[n]]
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                raise UsageError(f"{', '.join(given)} only {verb} to --executor {executor}; got --executor "
                                 f"{self.executor}")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise UsageError(f"--max_parallel must be a positive integer; got {self.max_parallel}")
        for name in ("cpus_per_run", "gpus_per_run", "ray_num_cpus", "slurm_time_min", "slurm_array_parallelism"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "gpus_per_run" else 1):
                raise UsageError(f"--{name} must be {'>= 0' if name == 'gpus_per_run' else '>= 1'}; got {value}")
        if self.slurm_cluster not in SLURM_CLUSTERS:
            raise UsageError(f"--slurm_cluster must be one of {', '.join(SLURM_CLUSTERS)}; got {self.slurm_cluster!r}")
        self.gpu_list()

    def gpu_list(self) -> list[str]:
        """The --gpus ids ("0,1" -> ["0", "1"]), checked to be distinct non-negative integers."""
        if self.gpus is None:
            return []
        ids = [g.strip() for g in self.gpus.split(",") if g.strip()]
        if not ids or not all(g.isdigit() for g in ids) or len(set(ids)) != len(ids):
            raise UsageError(f"--gpus must be distinct comma-separated GPU ids such as 0,1; got {self.gpus!r}")
        return ids

    def parallel(self) -> int:
        """--max_parallel, defaulting to one worker per --gpus id (else 1)."""
        return self.max_parallel if self.max_parallel is not None else max(1, len(self.gpu_list()))

    def setup_lines(self) -> list[str]:
        return [line.strip() for line in (self.slurm_setup or "").split(";") if line.strip()]
