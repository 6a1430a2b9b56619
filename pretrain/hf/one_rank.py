"""A one-rank gloo process group with megatron's parallel state, for the conversion commands:
they build or read a whole (TP1/PP1) model in this process."""
from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def one_rank_process_group():
    from launch.local import free_port, in_distributed_launch
    from pretrain.distributed import init_distributed, shutdown
    from pretrain.errors import HetronError

    if in_distributed_launch() and os.environ.get("WORLD_SIZE") != "1":
        raise HetronError("the Hugging Face conversion runs as one process; start it without srun/torchrun")
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    info = init_distributed(1, 1, "gloo")
    try:
        yield info
    finally:
        shutdown()
