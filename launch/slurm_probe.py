"""Whether a usable Slurm is reachable from here: controller up, a node to run on, accounting on (without
accounting submitit cannot tell a job's end state, and waiting on a job that died hangs)."""
from __future__ import annotations

import shutil
import subprocess


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


def slurm_unreachable_reason() -> str | None:
    """None when Slurm can run jobs here; otherwise one line saying what is missing."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm is not installed here (no sinfo/sbatch on PATH); as root: scripts/slurm-local.sh start"
    nodes = _run("sinfo", "-h", "-o", "%T")
    if nodes.returncode != 0:
        return f"slurmctld is not reachable: {nodes.stderr.strip() or 'sinfo failed'}"
    usable = [s for s in nodes.stdout.split() if s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing")]
    if not usable:
        return f"no Slurm node can run jobs (node states: {' '.join(nodes.stdout.split()) or 'none'})"
    accounting = _run("sacct", "-n", "-X", "-S", "now")
    if accounting.returncode != 0:
        return f"Slurm accounting is off or down (sacct: {accounting.stderr.strip()})"
    return None
