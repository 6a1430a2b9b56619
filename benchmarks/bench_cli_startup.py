"""How fast the CLI answers before any work: `--help`, config errors, `--print-config`, `--dry-run`,
`hetron submit --dry-run`, each run as a fresh process (the median of --repeats), in wall and CPU
seconds, against a baseline measured in the same run: a process that only imports torch and
megatron-core, which every one of these paid before the config was validated first (issue 20 item 4).

    .venv/bin/python benchmarks/bench_cli_startup.py [--repeats 5] [--quick]

RATIO lines: each case's wall time over the baseline's (below 1: faster than importing torch alone).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cases(tmp: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "pretrain.cli"]
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("train: {steps: 3\n")
    run = f"run.dir={tmp / 'run'}"
    return {
        "import torch + megatron.core (baseline)": [sys.executable, "-c", "import torch, megatron.core"],
        "hetron --help": [*cli, "--help"],
        "hetron train --help": [*cli, "train", "--help"],
        "train: unknown key": [*cli, "train", "train.nope=1"],
        "train: bad value (lisa.state)": [*cli, "train", "lisa.state=drop"],
        "train: invalid YAML file": [*cli, "train", str(bad_yaml)],
        "train --print-config": [*cli, "train", "--print-config"],
        "train --dry-run (125m, placeholder corpus)": [*cli, "train", "--dry-run", "125m", run],
        "submit --dry-run (125m, placeholder corpus)": [*cli, "submit", "--dry-run", "125m", run],
        "submit --dry-run (tiny)": [*cli, "submit", "--dry-run", run],
    }


def measure(argv: list[str], repeats: int) -> tuple[float, float, int]:
    """Median wall and CPU seconds (user + system of the child) and the last exit status."""
    walls, cpus, rc = [], [], 0
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        rc = subprocess.run(argv, cwd=REPO, capture_output=True).returncode
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus), rc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="3 repeats")
    args = p.parse_args()
    repeats = 3 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: measure(argv, repeats) for name, argv in cases(Path(tmp)).items()}
    base_wall = next(iter(results.values()))[0]
    print(f"{'case':<46} {'wall s':>7} {'cpu s':>7} {'exit':>4}")
    for name, (wall, cpu, rc) in results.items():
        print(f"{name:<46} {wall:7.2f} {cpu:7.2f} {rc:4d}")
    for name, (wall, _, _) in list(results.items())[1:]:
        print(f"RATIO cli_startup {name}: {wall / base_wall:.3f} of importing torch + megatron.core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
