"""The `hetron` command: one entry point, each subcommand implemented in the module that owns it.

Subcommand modules are imported lazily so `hetron fit-law` does not pay for importing megatron-core.
Each module exposes `main(argv: list[str]) -> int`.
"""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("pretrain.train_cli", "pretrain a GPT (default: tiny preset on the Python stdlib, CPU)"),
    "prepare": ("data.prepare_cli", "tokenize a corpus into mosaicml-streaming MDS shards"),
    "fit-law": ("pretrain.scaling_law.cli", "fit the annealing / multi-power scaling law to loss curves"),
    "schedule": ("pretrain.schedules.cli", "plot or print an LR schedule"),
    "plan-bench": ("parallel.plan_bench", "benchmark the adaptive sequence-parallel planner"),
    "calibrate": ("pretrain.calibrate_cli", "measure and fit the sequence-parallel cost model here"),
    "submit": ("pretrain.submit_cli", "submit a training job to Slurm through submitit"),
    "status": ("launch.status_cli", "show the state of a submitted job"),
    "import-hf": ("pretrain.hf.import_cli", "write a hetron checkpoint of a Hugging Face Llama/Mistral/Qwen2 model"),
    "export-hf": ("pretrain.hf.export_cli", "write a run's checkpoint as a Hugging Face model folder"),
}


def usage() -> str:
    lines = ["usage: hetron COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "`hetron COMMAND --help` for a command's options."]
    return "\n".join(lines)


def quiet_library_warnings() -> None:
    """megatron-core, torch and streaming warn about optional accelerators and deprecations on every
    start; a person running hetron reads its own messages (HETRON_WARNINGS=1 shows them)."""
    import logging
    import os
    import warnings

    if os.environ.get("HETRON_WARNINGS") != "1":
        warnings.filterwarnings("ignore", module=r"(megatron|torch|streaming|transformers)(\.|$)")
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
        # "No CUDA runtime is found" on CPU machines; streaming's note on `replication` resumption,
        # which hetron accounts for (data.loader keeps its own position).
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        logging.getLogger("streaming").setLevel(logging.ERROR)


def run_script(main_fn, command: str) -> None:
    """`python -m MODULE` entry of a rank process or a standalone command: quiet library warnings,
    a HetronError becomes one line and exit status 2."""
    from pretrain.errors import HetronError

    quiet_library_warnings()
    try:
        sys.exit(main_fn(sys.argv[1:]))
    except HetronError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    from pretrain.errors import HetronError

    quiet_library_warnings()

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"hetron: error: unknown command {name!r}; one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except HetronError as exc:
        print(f"hetron {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hetron {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
