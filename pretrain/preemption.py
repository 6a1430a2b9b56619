"""A stop requested by a signal (Slurm's warning before preemption or the time limit), honoured by
every rank together at a step boundary: the trainer saves a checkpoint there, then runs the
requester's callback (under submitit, on rank 0: requeue the job and exit).

A signal reaches the ranks at slightly different moments, so each rank only records it; once
`install` has been called the trainer all-reduces the flag after every step (one integer), and all
ranks stop after the same step."""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist

_state = {"installed": False, "requested": False, "callback": None}


def install(signum: int = signal.SIGUSR2) -> None:
    """Route `signum` here on this rank; the handler that was installed before it (submitit's) runs
    as the callback once the checkpoint is written."""
    previous = signal.getsignal(signum)

    def on_signal(received: int, frame) -> None:
        _state["requested"] = True
        if callable(previous):
            _state["callback"] = lambda: previous(received, frame)

    signal.signal(signum, on_signal)
    _state["installed"] = True


def installed() -> bool:
    return _state["installed"]


def stop_agreed(device: torch.device | str) -> bool:
    """True on every rank once any rank has been signalled (a collective: call it on all ranks)."""
    if not _state["installed"]:
        return False
    flag = torch.tensor([1 if _state["requested"] else 0], dtype=torch.int32, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def run_callback() -> None:
    callback, _state["callback"] = _state["callback"], None
    if callback is not None:
        callback()
