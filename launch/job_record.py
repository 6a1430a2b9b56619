"""What `hetron submit` remembers about each job, so `hetron status JOB` can find its run folder and logs.

One JSON file per job (array tasks: per task, named ARRAYID_INDEX) under $HETRON_HOME/jobs (default
~/.hetron/jobs).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    cluster: str  # "slurm" or "local"
    submitit_folder: str
    run_dir: str
    train_argv: list[str]
    sweep_point: dict[str, str] = field(default_factory=dict)

    def log_paths(self) -> tuple[Path, Path]:
        """Rank 0's stdout and stderr, as submitit names them."""
        folder = Path(self.submitit_folder)
        return folder / f"{self.job_id}_0_log.out", folder / f"{self.job_id}_0_log.err"


def records_dir() -> Path:
    return Path(os.environ.get("HETRON_HOME", "~/.hetron")).expanduser() / "jobs"


def save_record(record: JobRecord) -> None:
    directory = records_dir()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{record.job_id}.json").write_text(json.dumps(asdict(record), indent=1))


def load_records(job_id: str) -> list[JobRecord]:
    """The job's record; for an array's id, the records of all its tasks (in index order)."""
    directory = records_dir()
    exact = directory / f"{job_id}.json"
    paths = [exact] if exact.is_file() else sorted(directory.glob(f"{job_id}_*.json"),
                                                   key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return [JobRecord(**json.loads(p.read_text())) for p in paths]
