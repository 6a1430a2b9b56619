"""`hetron status JOB`: a submitted job's state, requeues, the training step it reached, and the last lines
of its log (where a failing job's error is). An array's id shows every run of the sweep."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from launch.job_record import JobRecord, load_records, records_dir
from pretrain.arg_parser import OneLineErrorParser
from pretrain.errors import HetronError

FAILED_STATES = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                 "DEADLINE"}


@dataclass(frozen=True)
class SlurmState:
    state: str  # of the newest attempt
    exit_code: str
    elapsed: str
    requeues: int


def slurm_state(job_id: str) -> SlurmState | None:
    """From accounting (sacct): it still knows the job after slurmctld has forgotten it."""
    if shutil.which("sacct") is None:
        return None
    proc = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,State,ExitCode,Elapsed"],
                          capture_output=True, text=True, timeout=30, check=False)
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.count("|") == 3]
    rows = [r for r in rows if r[0] == job_id]
    if proc.returncode != 0 or not rows:
        return None
    newest = rows[-1]
    return SlurmState(state=newest[1].split()[0], exit_code=newest[2], elapsed=newest[3],
                      requeues=sum(r[1] == "REQUEUED" for r in rows))


def submitit_outcome(record: JobRecord) -> str | None:
    """DONE or FAILED once rank 0 has written its result (the only record of a --local job's end)."""
    result = Path(record.submitit_folder) / f"{record.job_id}_0_result.pkl"
    if not result.is_file():
        return None
    import pickle

    with result.open("rb") as f:
        outcome, _ = pickle.load(f)
    return "COMPLETED" if outcome == "success" else "FAILED"


def step_reached(run_dir: Path) -> str:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return "no metrics yet"
    last = None
    for line in metrics.read_text().splitlines():
        try:
            last = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
    if not last:
        return "no metrics yet"
    loss = f", loss {last['loss']:.4f}" if isinstance(last.get("loss"), (int, float)) else ""
    return f"step {last.get('step')}{loss}"


def log_to_show(record: JobRecord, failed: bool) -> Path | None:
    """A failed job: the stderr with a traceback (rank 0's unless only another rank has one); otherwise
    rank 0's stdout, where training progress goes."""
    folder = Path(record.submitit_folder)
    stdout, stderr = record.log_paths()
    if not failed:
        return stdout if stdout.is_file() else None
    logs = sorted(folder.glob(f"{record.job_id}_*_log.err"),
                  key=lambda p: int(p.name[len(record.job_id) + 1:].split("_")[0]))
    for log in logs:
        if "Traceback" in log.read_text(errors="replace"):
            return log
    return stderr if stderr.is_file() else None


def error_line(log: Path) -> str | None:
    """The last exception line (`SomeError: message`) of a traceback in the log."""
    # torch.distributed prefixes each rank's traceback lines with "[rankN]: ".
    pattern = r"^(?:\[rank\d+\]:\s*)?(?:\w+\.)*(\w+(?:Error|Exception|Failed|Interrupt)\b.*)$"
    found = re.findall(pattern, log.read_text(errors="replace"), re.MULTILINE)
    return found[-1] if found else None


def tail(path: Path, lines: int) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:]


def report(record: JobRecord, lines: int) -> tuple[list[str], bool]:
    """Lines to print, and whether the job failed."""
    state = slurm_state(record.job_id) if record.cluster == "slurm" else None
    if state:
        head = (f"job {record.job_id}: {state.state} (exit {state.exit_code}, elapsed {state.elapsed}, "
                f"requeued {state.requeues} time(s))")
        failed = state.state in FAILED_STATES
    else:
        outcome = submitit_outcome(record) or "RUNNING or unknown"
        head = f"job {record.job_id} ({record.cluster}): {outcome}"
        failed = outcome == "FAILED"
    out = [head]
    if record.sweep_point:
        out.append("  sweep point: " + ", ".join(f"{k}={v}" for k, v in record.sweep_point.items()))
    out.append(f"  run folder: {record.run_dir}")
    out.append(f"  reached: {step_reached(Path(record.run_dir))}")
    log = log_to_show(record, failed)
    if log is None:
        out.append("  no log yet")
    else:
        error = error_line(log) if failed else None
        if error:
            out.append(f"  error: {error}")
        out.append(f"  last lines of {log}:")
        out += [f"    {line}" for line in tail(log, lines)]
    return out, failed


def main(argv: list[str]) -> int:
    p = OneLineErrorParser(prog="hetron status", description=__doc__)
    p.add_argument("job", help="job id from `hetron submit` (an array's id shows all its runs)")
    p.add_argument("--lines", type=int, default=15, help="log lines to show (default 15)")
    args = p.parse_args(argv)
    records = load_records(args.job)
    if not records:
        raise HetronError(f"job {args.job}: not submitted by hetron submit here (no record in {records_dir()})")
    any_failed = False
    for record in records:
        lines, failed = report(record, args.lines)
        print("\n".join(lines))
        any_failed |= failed
    return 1 if any_failed else 0
