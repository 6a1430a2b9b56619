"""`hetron schedule plot`: draw LR schedules (PNG) and print their values at given steps."""
from __future__ import annotations

import argparse

import numpy as np

from pretrain.arg_parser import OneLineErrorParser
from pretrain.errors import HetronError
from pretrain.schedules.spec import ScheduleSpec, parse_spec_text


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="hetron schedule", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    plot = sub.add_parser("plot", help="plot schedules and print their LR at given steps")
    plot.add_argument("specs", nargs="+", metavar="SPEC",
                      help="a YAML file (keys at top level or under schedule:) or key=value,... "
                           "e.g. kind=wsd,peak_lr=3e-4,min_lr=3e-5,warmup_steps=100,total_steps=1000,cooldown_steps=200")
    plot.add_argument("--out", default=None, help="PNG to write (default: no plot)")
    plot.add_argument("--at", default=None,
                      help="comma-separated steps to print (default: 0, end of warmup, 25/50/75%%, last step)")
    plot.add_argument("--steps", type=int, default=None, help="steps to draw (default: the longest total_steps)")
    return parser


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise HetronError(f"--at {text!r}: expected comma-separated integer steps") from None
    if any(s < 0 for s in steps):
        raise HetronError(f"--at {text!r}: steps must be >= 0")
    return steps


def default_steps(spec: ScheduleSpec) -> list[int]:
    t = spec.total_steps
    return sorted({0, spec.warmup_steps, t // 4, t // 2, 3 * t // 4, t - 1})


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    specs = [parse_spec_text(text, prefix="schedule") for text in args.specs]
    for text, spec in zip(args.specs, specs):
        steps = parse_steps(args.at) if args.at else default_steps(spec)
        print(f"{spec.kind} ({text})")
        values = spec.lrs_at(np.asarray(steps))
        for step, lr in zip(steps, values):
            print(f"  step {step:>9d}  lr {lr:.6g}")
    if args.out:
        from pretrain.schedules.plot import plot_schedules

        num_steps = args.steps or max(s.total_steps for s in specs)
        plot_schedules(specs, args.specs, num_steps, args.out)
        print(f"wrote {args.out}")
    return 0
