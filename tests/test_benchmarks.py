"""`make bench` (benchmarks/run_all.py): it starts, it knows every benchmark script, and every script
has the reduced mode (`--quick`) run_all calls. The benchmarks themselves are not run here: they time
things, and no test asserts on wall time."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
HELPERS = {"run_all.py", "single_rank.py", "reprice_plans.py"}  # not benchmarks: used by them or on their output
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name not in HELPERS)


def run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=BENCH, capture_output=True, text=True, timeout=timeout)


def test_run_all_help():
    proc = run("run_all.py", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--only" in proc.stdout and "--list" in proc.stdout


def test_run_all_lists_every_benchmark_script_in_its_reduced_mode():
    proc = run("run_all.py", "--list", "--out", "/tmp/hetron-test-run-all")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if ".py " in line]
    listed = {next(w for w in line.split() if w.endswith(".py")) for line in lines}
    assert listed == set(SCRIPTS), f"run_all.py misses {set(SCRIPTS) - listed} or lists unknown {listed - set(SCRIPTS)}"
    assert all("--quick" in line for line in lines)


def test_run_all_refuses_an_unknown_benchmark_name():
    proc = run("run_all.py", "--list", "--only", "trainr")
    assert proc.returncode == 2
    assert "'trainr' is not a benchmark" in proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_has_the_reduced_mode_run_all_calls(script):
    proc = run(script, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--quick" in proc.stdout
