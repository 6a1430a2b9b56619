"""A stop requested by a signal, honoured by every rank together at a step boundary: the trainer
saves a checkpoint there and the run ends with a message saying how to resume.

Signals: Slurm's warning before preemption or the time limit (USR2, under Slurm), and SIGTERM /
SIGINT everywhere (a `kill`, a Ctrl-C forwarded by the local launcher, Slurm's scancel), as
Megatron's exit-signal handler does. A second signal of the same kind aborts at once. Under
submitit the handler that was installed before (submitit's: requeue and exit) runs as the
callback once the checkpoint is written.

A signal reaches the ranks at slightly different moments, so each rank only records it; once a
handler is installed the trainer all-reduces the flag after every step (one integer), and all
ranks stop after the same step."""
from __future__ import annotations

import os
import signal

import torch
import torch.distributed as dist

_state: dict = {"installed": set(), "requested": None, "callback": None}
_PRIORITY = {signal.SIGINT: 1, signal.SIGTERM: 2, signal.SIGUSR2: 3}
_BY_PRIORITY = {v: k for k, v in _PRIORITY.items()}


def install(signum: int = signal.SIGUSR2) -> None:
    """Route `signum` here on this rank."""
    previous = signal.getsignal(signum)

    def on_signal(received: int, frame) -> None:
        current = _state["requested"]
        if current == received and received != signal.SIGUSR2:
            # the second Ctrl-C / SIGTERM: no checkpoint, stop now with the default action
            signal.signal(received, signal.SIG_DFL)
            os.kill(os.getpid(), received)
            return
        if current is None or _PRIORITY.get(received, 0) > _PRIORITY.get(current, 0):
            _state["requested"] = received
        if callable(previous) and previous not in (signal.default_int_handler,):
            _state["callback"] = lambda: previous(received, frame)

    signal.signal(signum, on_signal)
    _state["installed"].add(signum)


def install_stop_signals() -> None:
    """SIGTERM and SIGINT: checkpoint at the next step boundary, then exit. A SIGTERM handler that
    is already there is left alone: submitit's, which ignores the SIGTERM that Slurm sends before the
    USR2 of a preemption (the USR2 then checkpoints and requeues)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signum in _state["installed"]:
            continue
        if signum == signal.SIGTERM and callable(signal.getsignal(signum)):
            continue
        install(signum)


def installed(signum: int = signal.SIGUSR2) -> bool:
    return signum in _state["installed"]


def requested_signal() -> int | None:
    """The signal that asked this rank to stop, if any."""
    return _state["requested"]


def stop_agreed(device: torch.device | str) -> int:
    """The signal number once any rank has been signalled (the same on every rank), else 0; a
    collective: call it on all ranks."""
    if not _state["installed"]:
        return 0
    # Slurm's warning outranks a kill: a preempted job that also got SIGTERM is requeued
    flag = torch.tensor([_PRIORITY.get(_state["requested"], 0)], dtype=torch.int32, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    agreed = _BY_PRIORITY.get(int(flag.item()), 0)
    if agreed:
        _state["requested"] = agreed  # the same on every rank (a later signal here aborts at once)
    return agreed


def run_callback() -> None:
    callback, _state["callback"] = _state["callback"], None
    if callback is not None:
        callback()
