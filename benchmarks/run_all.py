"""Every benchmark under benchmarks/ in its reduced mode (`--quick`), one after another, each printing
the ratios it measured against a baseline in the same run (lines starting with RATIO); a summary
table at the end. `make bench` runs this. Minutes on a 2-core CPU; the full-size commands and their
recorded results are in BENCHMARKS.md.

    .venv/bin/python benchmarks/run_all.py [--only trainer,planner] [--out DIR] [--list]

Inputs: the default tiny corpus shards (prepared into the cache on first use, as `hetron train`
does), and for the planner, sequence-parallel, scaling-law and forecast benchmarks the shared data
(../shared/data or $HETRON_SHARED_DATA); a benchmark whose input is absent is skipped, saying so.
Exit status 1 if any benchmark failed.
"""
from __future__ import annotations

import argparse
import os
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("HETRON_SHARED_DATA", REPO.parent / "shared" / "data"))
# The sequence-parallel benchmark's model and cost-model calibration, reduced (BENCHMARKS.md has the full one).
SP_MODEL = ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4", "model.ffn_hidden_size=128",
            "model.seq_length=1024", "sp.tokens_per_rank=256"]


@dataclass
class Benchmark:
    name: str
    script: str
    args: list[str] = field(default_factory=list)
    needs: list[Path] = field(default_factory=list)  # input files; skipped when one is missing
    before: list[list[str]] = field(default_factory=list)  # commands run first (same log)


def benchmarks(shards: str, out: Path) -> list[Benchmark]:
    py = sys.executable
    hetron = str(Path(py).with_name("hetron"))
    cost = out / "sp-calibration" / "cost.json"
    return [
        Benchmark("trainer", "bench_trainer.py", ["--quick", f"data.shards={shards}"]),
        Benchmark("reweighting", "bench_reweighting.py", ["--quick", f"data.shards={shards}"]),
        Benchmark("lisa", "bench_lisa.py", ["--quick", "--shards", shards]),
        Benchmark("lisa_switch", "bench_lisa_switch.py", ["--quick", "--shards", shards]),
        Benchmark("data_reads", "bench_data_reads.py", ["--quick", "--shards", shards]),
        Benchmark("peak_rss", "peak_rss.py", ["--quick", "--shards", shards]),
        Benchmark("reweighting_memory", "bench_reweighting_memory.py", ["--quick", "--shards", shards]),
        Benchmark("planner", "bench_planner.py", ["--quick"], needs=[SHARED / "seqlens" / "wikipedia.txt"]),
        Benchmark("sequence_parallel", "bench_sequence_parallel.py",
                  ["--quick", "--cost-model", str(cost), "--nproc", "2", "--lengths",
                   str(SHARED / "seqlens" / "wikipedia.txt"), *SP_MODEL, f"data.shards={shards}",
                   f"run.dir={out / 'sp-run'}"],
                  needs=[SHARED / "seqlens" / "wikipedia.txt"],
                  before=[[hetron, "calibrate", *SP_MODEL, f"data.shards={shards}", f"run.dir={cost.parent}",
                           "launch.nproc=2", "--lengths", "64,128,256", "--repeats", "1", "--out", str(cost)]]),
        Benchmark("scaling_law", "bench_scaling_law.py", ["--quick"], needs=[SHARED / "loss-curves" / "mpl-25M"]),
        Benchmark("multinode", "bench_multinode.py", ["--quick"]),
        Benchmark("hf_convert", "bench_hf_convert.py", ["--quick"]),
        Benchmark("forecast", "bench_forecast.py", ["--quick"], needs=[SHARED / "loss-curves" / "mpl-25M"]),
        Benchmark("cli_startup", "bench_cli_startup.py", ["--quick"]),
        Benchmark("gpu", "gpu_bench.py", ["--quick"]),
    ]


def default_shards(out: Path) -> str:
    """The default config's shards folder, prepared now if missing (a child process: it imports torch)."""
    code = ("import sys; from pretrain.bootstrap import prepare_run; from pretrain.config import load_config; "
            f"print(prepare_run(load_config(None, ['run.dir={out / 'prepare'}', 'resume=never'])).shards)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"run_all: preparing the default shards failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(bench: Benchmark, out: Path) -> tuple[str, float, float, list[str]]:
    """(status, wall s, CPU s, RATIO lines) of one benchmark; its whole output goes to out/NAME.log."""
    log_path = out / f"{bench.name}.log"
    ratios: list[str] = []
    start, cpu0 = time.perf_counter(), children_cpu()
    status = "ok"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log_path, "w") as log:
        commands = [*bench.before, [sys.executable, str(HERE / bench.script), *bench.args]]
        for cmd in commands:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1)
            for line in proc.stdout:
                log.write(line)
                if line.startswith("RATIO "):
                    ratios.append(line[len("RATIO "):].rstrip())
                    print(f"  {ratios[-1]}", flush=True)
            if proc.wait() != 0:
                status = f"FAILED (exit {proc.returncode}; see {log_path})"
                break
    if status == "ok" and not ratios:
        status = f"FAILED (printed no RATIO line; see {log_path})"
    return status, time.perf_counter() - start, children_cpu() - cpu0, ratios


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    ap.add_argument("--out", default="/tmp/hetron-bench-all", help="logs and scratch files (default %(default)s)")
    ap.add_argument("--list", action="store_true", help="print the benchmarks and their commands, run nothing")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shards = "SHARDS" if args.list else default_shards(out)
    selected = benchmarks(shards, out)
    known = [b.name for b in selected]
    if args.only:
        wanted = args.only.split(",")
        unknown = [w for w in wanted if w not in known]
        if unknown:
            ap.error(f"--only {unknown[0]!r} is not a benchmark; known: {', '.join(known)}")
        selected = [b for b in selected if b.name in wanted]
    if args.list:
        for b in selected:
            for cmd in b.before:
                print(f"{b.name}: {shlex.join(cmd)}")
            print(f"{b.name}: {shlex.join([sys.executable, b.script, *b.args])}")
        return 0
    print(f"shards: {shards}; logs: {out}; machine: {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for bench in selected:
        missing = [str(p) for p in bench.needs if not p.exists()]
        print(f"\n== {bench.name} ({bench.script} {' '.join(bench.args[:1])})", flush=True)
        if missing:
            rows.append((bench.name, f"skipped: {missing[0]} is missing", 0.0, 0.0, []))
            print(f"  {rows[-1][1]}", flush=True)
            continue
        status, wall, cpu, ratios = run_one(bench, out)
        rows.append((bench.name, status, wall, cpu, ratios))
        print(f"  {status}: {wall:.0f} s wall, {cpu:.0f} s CPU", flush=True)
    print("\n" + "=" * 100)
    print(f"{'benchmark':<20} {'wall s':>7} {'CPU s':>7}  status / ratios (reduced mode: indicative, "
          f"BENCHMARKS.md has the full runs)")
    for name, status, wall, cpu, ratios in rows:
        print(f"{name:<20} {wall:>7.0f} {cpu:>7.0f}  {status}")
        for r in ratios:
            print(f"{'':<38}{r}")
    return 1 if any(r[1].startswith("FAILED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
