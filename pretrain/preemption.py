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


def install(signum: int = signal.SIGUSR2) -> None:
    """Route `signum` here on this rank."""
    previous = signal.getsignal(signum)

    def on_signal(received: int, frame) -> None:
        if _state["requested"] == received and received != signal.SIGUSR2:
            # the second Ctrl-C / SIGTERM: no checkpoint, stop now with the default action
            signal.signal(received, signal.SIG_DFL)
            os.kill(os.getpid(), received)
            return
        _state["requested"] = received
        if callable(previous) and previous not in (signal.default_int_handler,):
            _state["callback"] = lambda: previous(received, frame)

    signal.signal(signum, on_signal)
    _state["installed"].add(signum)


def install_stop_signals() -> None:
    """SIGTERM and SIGINT: checkpoint at the next step boundary, then exit."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signum not in _state["installed"]:
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
    flag = torch.tensor([_state["requested"] or 0], dtype=torch.int32, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    agreed = int(flag.item())
    if agreed and _state["requested"] is None:
        _state["requested"] = agreed  # another rank was signalled: a signal here now aborts at once
    return agreed


def run_callback() -> None:
    callback, _state["callback"] = _state["callback"], None
    if callback is not None:
        callback()
