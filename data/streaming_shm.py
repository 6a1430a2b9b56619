"""The one place hetron touches mosaicml-streaming's internals: attaching to a shared-memory block
that its creator has not sized yet.

Every rank of a node creates streaming's per-node arrays (`SharedArray`) with "create, or attach if
it exists": on FileExistsError, streaming sleeps one TICK (7 ms) and attaches. Python's POSIX
SharedMemory creates a block in two calls (shm_open, then ftruncate), so a creator descheduled
between them - common with 4 ranks on 2 busy cores, and at job start on any loaded node - leaves the
attacher a 0-byte block, and `mmap` raises "cannot mmap an empty file": the job dies opening its
shards (seen in a two-node Slurm test). Here the attach waits, up to ATTACH_WAIT_S, for the block to
be sized. Applied only to the streaming versions read for it (0.13.x), where the attach is
`BuiltinSharedMemory(name, False, size)` in streaming.base.shared.memory.
"""
from __future__ import annotations

import os
import time
from multiprocessing.shared_memory import SharedMemory as BuiltinSharedMemory

ATTACH_WAIT_S = 10.0
CHECKED_VERSIONS = ("0.13.",)


class SizedAttachSharedMemory(BuiltinSharedMemory):
    """SharedMemory whose attach (create=False) waits while the block is still 0 bytes long."""

    def __init__(self, name=None, create=False, size=0):
        deadline = time.monotonic() + ATTACH_WAIT_S
        while True:
            try:
                super().__init__(name, create, size)
                return
            except ValueError as exc:
                if create or "empty file" not in str(exc) or time.monotonic() > deadline:
                    raise
                fd = getattr(self, "_fd", -1)  # the failed attach left its descriptor open
                if fd >= 0:
                    os.close(fd)
                    self._fd = -1
                time.sleep(0.005)


def tolerate_unsized_shared_memory() -> bool:
    """Install the waiting attach into streaming (idempotent); False where this streaming is not a
    version it was checked against, which is then left as it is."""
    import streaming
    from streaming.base.shared import memory

    if not streaming.__version__.startswith(CHECKED_VERSIONS) or not hasattr(memory, "BuiltinSharedMemory"):
        return False
    memory.BuiltinSharedMemory = SizedAttachSharedMemory
    return True
