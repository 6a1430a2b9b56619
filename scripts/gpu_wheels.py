"""The wheel set that travels to the GPU machine (no network there): every distribution hetron's
training path imports here, less what that machine already has (scripts/gpu-device-packages.txt),
at the versions installed here, as CPython 3.12 manylinux x86-64 wheels.

    python scripts/gpu_wheels.py [--out .whl] [--dry-run] [--max-mib 64]

--dry-run prints the set and the pip command without downloading (make test runs it so).
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVICE_PACKAGES = REPO / "scripts" / "gpu-device-packages.txt"
# what hetron imports for training, evaluation, checkpoints and the planner
ENTRY_MODULES = ["pretrain.cli", "pretrain.train_program", "pretrain.trainer", "data.prepare", "launch.local",
                 "streaming", "pulp", "highspy", "submitit", "megatron.core.optimizer",
                 "megatron.core.dist_checkpointing", "megatron.core.models.gpt"]
# the project itself (it travels as the working tree), the machine's own torch stack, and optional
# loggers that only their config switches on
NEVER = {"hetron", "torch", "torchvision", "triton", "wandb"}
NEVER_PREFIXES = ("nvidia-", "cuda-", "opentelemetry-")
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64"]


def normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def imported_distributions() -> dict[str, str]:
    """{distribution: version} of every distribution whose modules the entry modules import,
    measured in a fresh interpreter."""
    code = ("import importlib, importlib.metadata as md, json, sys, warnings\n"
            "warnings.simplefilter('ignore')\n"
            f"for m in {ENTRY_MODULES!r}: importlib.import_module(m)\n"
            "pd = md.packages_distributions()\n"
            "names = {d for m in list(sys.modules) for d in pd.get(m.split('.')[0], [])}\n"
            "print(json.dumps({d: md.version(d) for d in names}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"gpu_wheels: importing hetron's entry modules failed: {proc.stderr.strip()[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def device_packages() -> set[str]:
    lines = DEVICE_PACKAGES.read_text().splitlines()
    return {normalize(line) for line in lines if line.strip() and not line.startswith("#")}


def wheel_set() -> dict[str, str]:
    have = device_packages()
    out = {}
    for name, version in imported_distributions().items():
        key = normalize(name)
        if key in have or key in NEVER or key.startswith(NEVER_PREFIXES):
            continue
        out[key] = version
    return dict(sorted(out.items()))


def pip_command(specs: list[str], out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none", "-d", str(out)]
    for platform in PLATFORMS + ["any"]:
        cmd += ["--platform", platform]
    return cmd + specs


def download(name: str, version: str, out: Path) -> str:
    """The wheel of the version installed here; where that version has no CPython 3.12 manylinux wheel,
    the newest of the same minor release (said in the output). Returns the spec that was fetched."""
    major_minor = ".".join(version.split(".")[:2])
    for spec in (f"{name}=={version}", f"{name}=={major_minor}.*"):
        if subprocess.run(pip_command([spec], out), capture_output=True, text=True).returncode == 0:
            return spec
    raise SystemExit(f"gpu_wheels: no CPython 3.12 manylinux wheel of {name} {version} (nor {major_minor}.*) on the index")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / ".whl")
    parser.add_argument("--dry-run", action="store_true", help="print the set and the pip command; download nothing")
    parser.add_argument("--max-mib", type=float, default=64.0, help="the most the working tree may carry")
    args = parser.parse_args(argv)
    wheels = wheel_set()
    if not wheels:
        raise SystemExit("gpu_wheels: nothing to carry (every imported distribution is on the device already?)")
    print(f"{len(wheels)} wheels for the GPU machine: " + ", ".join(f"{n}=={v}" for n, v in wheels.items()))
    if args.dry_run:
        print("dry run: " + " ".join(pip_command([f"{n}=={v}" for n, v in wheels.items()], args.out)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, version in wheels.items():
        spec = download(name, version, args.out)
        if not spec.endswith(f"=={version}"):
            print(f"note: {name} {version} has no cp312 manylinux wheel; carrying {spec}")
    files = sorted(args.out.glob("*.whl"))
    mib = sum(f.stat().st_size for f in files) / 2**20
    print(f"{len(files)} wheels, {mib:.1f} MiB in {args.out}")
    if mib > args.max_mib:
        raise SystemExit(f"gpu_wheels: {mib:.1f} MiB of wheels is more than the {args.max_mib:.0f} MiB that may travel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
