"""Which rank runs where, and what to say when a rank is lost.

At start every rank contributes (host, address, pid); rank 0 writes the table to <run dir>/ranks.json
and prints one line per run ("4 ranks on 2 hosts: hnode1 (ranks 0-1), hnode2 (ranks 2-3)"). When a
collective fails because a peer died (gloo: "Connection closed by peer [10.77.0.12]:43121"), the
surviving ranks name the host and ranks behind the address the error gives, in one line.
"""
from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

RANKS_FILE = "ranks.json"


@dataclass(frozen=True)
class RankHost:
    rank: int
    host: str
    address: str  # the address this rank reaches the rendezvous from (what its peers see)
    pid: int


def this_rank(rank: int, master_addr: str, master_port: int) -> RankHost:
    return RankHost(rank, socket.gethostname(), outgoing_address(master_addr, master_port), os.getpid())


def outgoing_address(host: str, port: int) -> str:
    """The local address a connection to host:port leaves from (a UDP connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, port or 9))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def rank_ranges(ranks: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts, ranks = [], sorted(ranks)
    start = prev = None
    for r in ranks + [None]:
        if start is not None and (r is None or r != prev + 1):
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = None
        if r is not None and start is None:
            start = r
        prev = r
    return ", ".join(parts)


def hosts_summary(table: list[RankHost]) -> str:
    by_host: dict[str, list[int]] = {}
    for entry in table:
        by_host.setdefault(entry.host, []).append(entry.rank)
    noun = "host" if len(by_host) == 1 else "hosts"
    listed = ", ".join(f"{host} (rank{'s' if len(r) > 1 else ''} {rank_ranges(r)})" for host, r in by_host.items())
    return f"{len(table)} rank{'s' if len(table) > 1 else ''} on {len(by_host)} {noun}: {listed}"


def write_table(run_dir: Path, table: list[RankHost]) -> None:
    path = Path(run_dir) / RANKS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps([asdict(e) for e in table], indent=1) + "\n")
    tmp.replace(path)


def read_table(run_dir: Path) -> list[RankHost]:
    try:
        return [RankHost(**e) for e in json.loads((Path(run_dir) / RANKS_FILE).read_text())]
    except (OSError, ValueError, TypeError):
        return []


_PEER_ADDRESS = re.compile(r"\[?(\d{1,3}(?:\.\d{1,3}){3})\]?:(\d+)")


# torch.distributed raises plain RuntimeErrors (DistError only in newer paths): these marks of gloo's,
# NCCL's and c10d's texts tell a lost peer or a collective timeout from a bug in the step
COMMUNICATION_MARKS = ("gloo", "Connection closed by peer", "Connection reset by peer", "c10d", "NCCL",
                       "ProcessGroup", "Timed out")


def is_communication_failure(exc: BaseException) -> bool:
    import torch.distributed as dist

    return isinstance(exc, dist.DistError) or any(mark in str(exc) for mark in COMMUNICATION_MARKS)


def peers_named_in(message: str, table: list[RankHost], me: RankHost) -> list[RankHost]:
    """The other ranks on the hosts whose addresses a communication error names (a peer's port is not
    its rank's: every rank of that host is a suspect)."""
    addresses = {m.group(1) for m in _PEER_ADDRESS.finditer(message)}
    return [e for e in table if e.address in addresses and e.rank != me.rank]


def lost_peer_message(error: BaseException, table: list[RankHost], me: RankHost, step: int,
                      checkpoint: str | None) -> str:
    """One line for a rank whose collective failed: who it is, whom it lost, and how to go on."""
    text = " ".join(str(error).split())
    first = re.split(r" Exception raised from | This is typically caused", text)[0]  # torch's backtrace, gloo's advice
    first = re.sub(r"\[[^\]]*\.(?:cc|cpp):\d+\] ", "", first)  # the C++ source position
    first = first if len(first) <= 200 else first[:197] + "..."
    suspects = peers_named_in(text, table, me)
    if suspects:
        by_host: dict[str, list[int]] = {}
        for e in suspects:
            by_host.setdefault(e.host, []).append(e.rank)
        lost = "; ".join(f"rank{'s' if len(r) > 1 else ''} {rank_ranges(r)} on {h}" for h, r in by_host.items())
        who = f"lost {lost} (a rank there died or its node went away)"
    elif "timed out" in text.lower() or "timeout" in text.lower():
        who = "got no answer from the other ranks within launch.timeout_s (a rank hangs or its node went away)"
    else:
        who = "lost contact with the other ranks"
    resume = (f"the last checkpoint, {checkpoint}, is intact: run the job again to resume from it" if checkpoint
              else "no checkpoint was written yet")
    return f"rank {me.rank} on {me.host} {who} during step {step + 1}: {first}; {resume}"
