"""Local multi-process launch: N ranks on this machine, no torchrun needed.

Rank 0 inherits the terminal (progress bar, errors); the other ranks write to
<run dir>/logs/rank_N.log. If any rank fails, the others are stopped and the failing rank's last
line is shown. SIGINT (Ctrl-C) or SIGTERM to the launcher is forwarded to every rank, which save a
checkpoint at the next step boundary and exit; the launcher waits for them. A second signal kills
the ranks at once.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_distributed_launch() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def spawn_ranks(module: str, argv: list[str], nproc: int, log_dir: Path, *, master_port: int = 0,
                threads_per_rank: int = 0) -> int:
    """Run `python -m module argv...` as ranks 0..nproc-1; returns the first non-zero exit code (or 0)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = master_port or free_port()
    threads = threads_per_rank or max(1, (os.cpu_count() or 1) // nproc)
    procs, logs = [], []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS=str(threads), HETRON_THREADS=str(threads))
        if rank == 0:
            out = None
        else:
            out = open(log_dir / f"rank_{rank}.log", "w")
            logs.append(out)
        # Each rank leads its own process group so a failure takes down its helpers too (megatron's
        # checkpoint writer processes), as Slurm does; otherwise orphans keep our pipes open.
        procs.append(subprocess.Popen([sys.executable, "-m", module, *argv], env=env, stdout=out, stderr=out,
                                      start_new_session=True, preexec_fn=_terminate_with_parent))
    stop = _ForwardStopSignals(procs)
    try:
        return _wait_all(procs, log_dir, stop)
    finally:
        stop.restore()
        for f in logs:
            f.close()


class _ForwardStopSignals:
    """While ranks run: the first SIGINT/SIGTERM is passed on to every rank (they checkpoint and
    exit), a second one kills them."""

    def __init__(self, procs: list[subprocess.Popen]):
        self.procs = procs
        self.received: int | None = None
        self.killed = False
        self.previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _on_signal(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
            print(f"launcher: {signal.Signals(signum).name}: the ranks save a checkpoint at the next step and "
                  "stop (send it again to stop them at once)", file=sys.stderr, flush=True)
            for p in self.procs:
                _signal_group(p, signum)
            return
        self.killed = True
        for p in self.procs:
            _signal_group(p, signal.SIGKILL)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _wait_all(procs: list[subprocess.Popen], log_dir: Path, stop: _ForwardStopSignals) -> int:
    while True:
        codes = [p.poll() for p in procs]
        if stop.received is not None:
            # a stop the user asked for: every rank saves and exits by itself (or was killed)
            if all(c is not None for c in codes):
                _stop(procs)  # reap helpers a rank may have left behind
                return 128 + stop.received if stop.killed or any(c != 0 for c in codes) else 0
        elif any(c not in (None, 0) for c in codes):
            # Ranks usually fail together (same bad input): let them finish saying so, then report
            # rank 0's own message (already on the terminal) or else the first failing rank's.
            deadline = time.time() + 3
            while time.time() < deadline and any(p.poll() is None for p in procs):
                time.sleep(0.1)
            codes = [p.poll() for p in procs]
            _stop(procs)
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            killed = [(r, -c) for r, c in failed if c < 0]  # polled before _stop: signals from outside
            if killed:
                # A rank killed from outside (OOM killer, kill -9): the others only saw a lost peer.
                rank, signum = killed[0]
                print(f"launcher: rank {rank} (pid {procs[rank].pid}) on {socket.gethostname()} died of "
                      f"{_signal_name(signum)}; the other ranks were stopped", file=sys.stderr)
                return 128 + signum
            rank, code = failed[0]
            if rank != 0:
                last = _last_line(log_dir / f"rank_{rank}.log")
                if last:
                    print(f"rank {rank}: {last}", file=sys.stderr)
            return code if code > 0 else 128 - code
        elif all(c == 0 for c in codes):
            _stop(procs)  # reap helpers a rank may have left behind
            return 0
        time.sleep(0.2)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _terminate_with_parent() -> None:
    """In the rank, before exec: SIGTERM when the launcher dies, even by SIGKILL (Linux), so no rank
    trains on unowned after its launcher is gone (it saves a checkpoint and exits)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    deadline = time.time() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(p, signal.SIGKILL)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""
