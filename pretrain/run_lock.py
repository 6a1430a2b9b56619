"""One run per run folder: a lock file with the owner's host, pid and Slurm job, taken before
anything is written there and removed when the owner exits.

A second run on the same folder would interleave metrics.jsonl and overwrite checkpoints, so it is
refused with one line naming the owner. A lock whose owner is gone is taken over, with a message:
on the same host when its pid no longer runs, anywhere when it names this same Slurm job (a
requeued job) or a Slurm job that no longer runs. Ranks spawned by a local launcher run under
their launcher's lock (HETRON_RUN_LOCK_PID)."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from pretrain.errors import HetronError

LOCK_FILE = ".hetron-run.lock"
OWNER_ENV = "HETRON_RUN_LOCK_PID"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _slurm_job_running(job_id: str) -> bool | None:
    """Whether Slurm still runs the job; None when squeue cannot tell."""
    if not shutil.which("squeue"):
        return None
    try:
        proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return False if "Invalid job id" in proc.stderr else None
    return proc.stdout.strip() in ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED")


def _this_owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _owner_gone(owner: dict) -> bool:
    here = owner.get("host") == socket.gethostname()
    if here and not _pid_alive(int(owner.get("pid", 0))):
        return True
    job = str(owner.get("slurm_job_id") or "")
    if job and job == os.environ.get("SLURM_JOB_ID"):
        return True  # this job, requeued: its previous run is over
    if job and not here:
        return _slurm_job_running(job) is False
    return False


def _describe(owner: dict) -> str:
    job = f", Slurm job {owner['slurm_job_id']}" if owner.get("slurm_job_id") else ""
    return f"pid {owner.get('pid')} on {owner.get('host')}{job}, since {owner.get('started')}"


def _in_use(run_dir: Path, path: Path, owner: dict) -> HetronError:
    return HetronError(f"run.dir={run_dir} is in use by another run ({_describe(owner)}); stop it or "
                       f"choose another run.dir (if that run is gone, delete {path})")


def _read_owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _owner_mark(pid: int, run_dir: Path) -> str:
    return f"{pid}:{Path(run_dir).resolve()}"


def _held_by_our_launcher(owner: dict, run_dir: Path) -> bool:
    """The lock of run_dir is this process's launcher's (or its own): OWNER_ENV names the pid that
    took it and the folder. Only then, so a value inherited by an unrelated process (a test runner,
    a shell) or left from another folder grants nothing."""
    return (bool(owner) and owner.get("host") == socket.gethostname()
            and os.environ.get(OWNER_ENV) == _owner_mark(owner.get("pid", -1), run_dir))


def refuse_if_in_use(run_dir: Path) -> None:
    """The refusal acquire() would give, without taking the lock or writing anything (--dry-run)."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return
    try:
        owner = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if owner and not _held_by_our_launcher(owner, run_dir) and not _owner_gone(owner):
        raise _in_use(run_dir, path, owner)


def acquire(run_dir: Path) -> str | None:
    """Take the run folder's lock for this process (released at exit); returns a message when a
    stale lock was taken over. A folder another live run holds is a HetronError."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    if _held_by_our_launcher(_read_owner(path), run_dir):
        return None  # a rank of a local launch: the launcher holds the lock
    run_dir.mkdir(parents=True, exist_ok=True)
    message = None
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                owner = {}
            if owner and not _owner_gone(owner):
                raise _in_use(run_dir, path, owner)
            message = f"taking over the lock of a run that is gone ({_describe(owner) if owner else 'unreadable lock'})"
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(_this_owner(), f)
        atexit.register(release, run_dir)
        os.environ[OWNER_ENV] = _owner_mark(os.getpid(), run_dir)  # inherited by the ranks this process spawns
        return message
    raise HetronError(f"run.dir={run_dir}: another run took the lock {path} at the same moment")


def release(run_dir: Path) -> None:
    path = Path(run_dir) / LOCK_FILE
    try:
        owner = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
