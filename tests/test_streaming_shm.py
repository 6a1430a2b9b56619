"""mosaicml-streaming's per-node arrays are created by every local rank with "create, or attach if
it exists" and a 7 ms sleep in between. A creator descheduled between shm_open and ftruncate (a
loaded node at job start) leaves the attacher a 0-byte block. Here a real block is left unsized for
0.3 s, as that creator would, while streaming's own SharedArray attaches: without hetron's guard
(data.streaming_shm) it dies with "cannot mmap an empty file", as a two-node Slurm job of the suite
did; with it, it waits and attaches to the sized block."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

ATTACH = textwrap.dedent("""
    import os, sys, threading, time
    import numpy as np
    from multiprocessing import shared_memory, resource_tracker
    import _posixshmem
    from streaming.base.shared.array import SharedArray
    from data.streaming_shm import tolerate_unsized_shared_memory

    if sys.argv[1] == "guarded":
        assert tolerate_unsized_shared_memory()
    name = f"hetron_test_unsized_{os.getpid()}"
    # the creator: shm_open done, ftruncate not yet (it is descheduled for 0.3 s)
    fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
    sized = threading.Timer(0.3, lambda: os.ftruncate(fd, 8 * 4))
    sized.start()
    try:
        array = SharedArray(4, np.int64, name)  # what every local rank of a StreamingDataset does
        array.numpy()[:] = 7
        print("attached", array.numpy().tolist())
    except ValueError as exc:
        print("failed:", exc)
    finally:
        sized.join()
        os.close(fd)
        _posixshmem.shm_unlink("/" + name)
""")


def attach(mode: str) -> str:
    proc = subprocess.run([sys.executable, "-c", ATTACH, mode], check=False, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_streaming_alone_dies_on_a_block_its_creator_has_not_sized():
    assert "failed: cannot mmap an empty file" in attach("plain")


def test_the_guard_waits_for_the_creator_and_attaches():
    assert "attached [7, 7, 7, 7]" in attach("guarded")


def test_the_guard_leaves_other_errors_and_other_versions_alone(monkeypatch):
    import streaming

    from data import streaming_shm

    with pytest.raises(ValueError, match="must be a positive"):
        streaming_shm.SizedAttachSharedMemory("x", create=False, size=-1)
    monkeypatch.setattr(streaming, "__version__", "0.99.0")
    assert streaming_shm.tolerate_unsized_shared_memory() is False
