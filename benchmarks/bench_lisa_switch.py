"""The cost of a LISA switch on 2 data-parallel gloo ranks (megatron-core DDP + distributed optimizer,
lisa.state=offload): wall seconds per switch, bytes sent between the ranks, bytes copied to and from
host memory, and the host bytes each rank keeps for departed layers, for this checkout and for
another one (an earlier commit, checked out with `git worktree add DIR COMMIT`), in the same run.

    .venv/bin/python benchmarks/bench_lisa_switch.py --shards DIR [--preset tiny] [--gamma 2]
        [--switches 4] [--before DIR] [key=value ...]

Both arms run the same protocol in fresh ranks: build the trainer, one step, then `switches` times:
switch to the next interval's layers (timed), one step. Bytes of this checkout are its own
counters (lisa_switch_* metrics); an earlier checkout that has none is counted by its algorithm
(every rank all-reduced every trainable parameter's full state and kept full host copies): the
ring all-reduce of S bytes sends 2 (D-1)/D S per rank.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

RANKS = 2


def rank_main(out: Path, code: str, switches: int, overrides: list[str]) -> int:
    sys.path.insert(0, code)  # the checkout under test, ahead of this one
    import time

    import pretrain

    from pretrain.algorithms import build_algorithms
    from pretrain.bootstrap import load_prepared
    from pretrain.config import load_config
    from pretrain.distributed import init_distributed, shutdown
    from pretrain.trainer import Trainer

    assert Path(pretrain.__file__).resolve().is_relative_to(Path(code).resolve()), pretrain.__file__
    cfg = load_config(None, overrides)
    info = init_distributed(1, 1, "gloo", threads=int(os.environ.get("HETRON_THREADS", "1")))
    try:
        arch, shards, manifest = load_prepared(cfg)
        trainer = Trainer(cfg, info, arch, shards, manifest, build_algorithms(cfg))
        trainer.build()
        lisa = next(a for a in trainer.algorithms if a.name == "lisa")
        module = trainer.model_chunks[0].module
        trainer.train_step()
        rows = []
        for i in range(1, switches + 1):
            trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
            start = time.perf_counter()
            lisa.switch(trainer, i)
            seconds = time.perf_counter() - start
            cost = lisa.last_switch.as_metrics() if hasattr(lisa, "last_switch") else None
            offloaded = lisa.offloaded
            host = offloaded.nbytes() if hasattr(offloaded, "nbytes") else sum(
                t.numel() * t.element_size() for entry in offloaded.values() for t in entry.values())
            rows.append({"seconds": seconds, "trainable_before": trainable, "cost": cost, "host_kept": host})
            trainer.train_step()
        if info.rank == 0:
            out.write_text(json.dumps({"rows": rows, "world": info.world_size}))
    finally:
        shutdown()
    return 0


def run_arm(code: Path, args, overrides: list[str]) -> dict:
    from launch.local import spawn_ranks

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        argv = ["--rank", str(out), "--code", str(code), "--switches", str(args.switches), "--", *overrides,
                f"run.dir={tmp}/run"]
        code_rc = spawn_ranks("benchmarks.bench_lisa_switch", argv, RANKS, Path(tmp) / "logs")
        if code_rc != 0:
            logs = "\n".join(p.read_text()[-2000:] for p in (Path(tmp) / "logs").glob("*"))
            raise SystemExit(f"bench_lisa_switch: the arm in {code} failed (exit {code_rc})\n{logs}")
        return json.loads(out.read_text())


def summarize(result: dict, keys: int, full_tensor: bool = False) -> dict:
    """Per-rank means; full_tensor: the bytes the earlier full-tensor algorithm moves for the same
    switches, whatever the checkout counted."""
    rows = result["rows"]
    d = result["world"]
    sent, to_host, from_host = [], [], []
    for r in rows:
        if r["cost"] is not None and not full_tensor:  # counted by the checkout, summed over ranks
            sent.append(r["cost"]["lisa_switch_sent_bytes"] / d)
            to_host.append(r["cost"]["lisa_switch_to_host_bytes"] / d)
            from_host.append(r["cost"]["lisa_switch_from_host_bytes"] / d)
        else:  # the full-tensor algorithm: all-reduce and host copy of every trainable parameter's state
            state = keys * 4 * r["trainable_before"]
            sent.append(2 * (d - 1) / d * state)
            to_host.append(state)
            from_host.append(state)
    return {"seconds": statistics.median(r["seconds"] for r in rows), "sent": statistics.mean(sent),
            "to_host": statistics.mean(to_host), "from_host": statistics.mean(from_host),
            "host_kept": max(r["host_kept"] for r in rows)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--rank":
        sep = argv.index("--")
        opts = dict(zip(argv[:sep:2], argv[1:sep:2]))
        return rank_main(Path(opts["--rank"]), opts["--code"], int(opts["--switches"]), argv[sep + 1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--gamma", type=int, default=2)
    parser.add_argument("--switches", type=int, default=4)
    parser.add_argument("--before", help="another checkout to measure in the same run (an earlier commit)")
    parser.add_argument("--quick", action="store_true", help="reduced mode: 2 switches")
    parser.add_argument("overrides", nargs="*", help="extra config key=value")
    args = parser.parse_args(argv)
    if args.quick:
        args.switches = 2
    here = Path(__file__).resolve().parents[1]
    overrides = [f"model.preset={args.preset}", f"data.shards={args.shards}", "resume=never", "train.eval_every=0",
                 "schedule.warmup_steps=0", "train.steps=1000000", f"lisa.layers={args.gamma}", "lisa.interval=1000000",
                 "lisa.state=offload", "run.tensorboard=false", *args.overrides]
    arms = {"this checkout": here}
    if args.before:
        arms = {"before": Path(args.before).resolve(), **arms}
    raw = {name: run_arm(code, args, overrides) for name, code in arms.items()}
    results = {name: summarize(result, keys=2) for name, result in raw.items()}
    print(f"LISA switch, preset {args.preset}, gamma={args.gamma}, {RANKS} gloo ranks, distributed optimizer, fp32, "
          f"state=offload; per rank, mean over {args.switches} switches (seconds: median)")
    print(f"{'':28}" + "".join(f"{name:>18}" for name in results))
    for label, key, fmt in (("switch wall s", "seconds", "{:>18.3f}"), ("bytes sent to other ranks", "sent", "{:>18,.0f}"),
                            ("bytes to host", "to_host", "{:>18,.0f}"), ("bytes from host", "from_host", "{:>18,.0f}"),
                            ("host bytes kept (max)", "host_kept", "{:>18,.0f}")):
        print(f"{label:28}" + "".join(fmt.format(r[key]) for r in results.values()))
    def moved(r):
        return r["sent"] + r["to_host"] + r["from_host"]

    counterpart = summarize(raw["this checkout"], keys=2, full_tensor=True)
    print(f"RATIO bytes moved per rank vs the full-tensor algorithm on the same switches: "
          f"{moved(results['this checkout']) / moved(counterpart):.3f}")
    if "before" in results:
        now, before = results["this checkout"], results["before"]
        print(f"RATIO switch wall time this/before: {now['seconds'] / before['seconds']:.3f}")
        print(f"RATIO bytes moved per rank this/before: {moved(now) / moved(before):.3f}")
        print(f"RATIO host bytes kept per rank this/before: {now['host_kept'] / max(before['host_kept'], 1):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
