"""Host syncs of a training step: hetron's loss function and layers keep the step on the device.

On a GPU every `.item()`, `.tolist()`, `.cpu()`, `float(t)`, `int(t)` or `bool(t)` on a device
tensor stalls the host until the queued kernels finish. Here (CPU) a torch function mode counts
those calls by the hetron source line that makes them, over forward-backward steps of 2 and 6
micro-batches: none may come from the layers or the loss function, and the rest must not grow
with the number of micro-batches (they are the step's own reductions)."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

REPO = Path(__file__).resolve().parents[1]
SYNCS = {"item", "tolist", "cpu", "__float__", "__int__", "__bool__"}
HETRON_DIRS = tuple(str(REPO / d) + "/" for d in ("pretrain", "parallel", "data"))


class SyncCounter(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in SYNCS:
            frame = sys._getframe(1)
            while frame is not None and not frame.f_code.co_filename.startswith(HETRON_DIRS):
                frame = frame.f_back
            if frame is not None:
                where = f"{Path(frame.f_code.co_filename).relative_to(REPO)}:{frame.f_code.co_name}"
                self.calls[where] += 1
        return func(*args, **(kwargs or {}))


def sync_harness(out: Path, overrides: list[str]) -> int:
    from parallel import document_attention
    from pretrain.algorithms import build_algorithms
    from pretrain.bootstrap import load_prepared
    from pretrain.config import load_config
    from pretrain.distributed import init_distributed, shutdown
    from pretrain.step import SampleLosses
    from pretrain.trainer import Trainer

    cfg = load_config(None, ["resume=never", *overrides])
    info = init_distributed(1, 1, "gloo", threads=1)
    try:
        arch, shards, manifest = load_prepared(cfg)
        trainer = Trainer(cfg, info, arch, shards, manifest, build_algorithms(cfg))
        trainer.build()
        micro_batches = trainer.micro_batches(trainer.loader.next_batch())
        counts = {}
        # the block-diagonal mask, then one SDPA call per document (what packs longer than the mask limit take)
        for mask_limit in (document_attention.DENSE_MASK_MAX_TOKENS, 0):
            document_attention.DENSE_MASK_MAX_TOKENS = mask_limit
            for n in (2, 6):
                assert len(micro_batches) >= n, len(micro_batches)
                for chunk in trainer.model_chunks:
                    chunk.zero_grad_buffer()
                with SyncCounter() as counter:
                    trainer.run_micro_batches(micro_batches[:n], forward_only=False, record=SampleLosses())
                counts[mask_limit, n] = dict(counter.calls)
        torch.save(counts, out)
    finally:
        shutdown()
    return 0


@pytest.mark.slow
def test_no_host_syncs_in_layers_or_loss_and_none_per_micro_batch(tmp_path, small_shards):
    from conftest import TINY

    from launch.local import spawn_ranks

    out = tmp_path / "syncs.pt"
    code = spawn_ranks("tests.test_step_syncs", [str(out), f"run.dir={tmp_path / 'run'}", f"data.shards={small_shards}",
                                                 *[a for a in TINY if "=" in a], "data.global_batch_tokens=2048"],
                       1, tmp_path / "logs")
    assert code == 0, [p.read_text()[-3000:] for p in (tmp_path / "logs").glob("*")]
    counts = torch.load(out)
    assert len(counts) == 4
    for mask_limit in {limit for limit, _ in counts}:
        for where in counts[mask_limit, 6]:
            assert not where.startswith(("parallel/document_attention.py", "parallel/ulysses.py")), where
            assert "loss_func" not in where and "forward_step" not in where, where
        assert counts[mask_limit, 2] == counts[mask_limit, 6]


if __name__ == "__main__":
    sys.exit(sync_harness(Path(sys.argv[1]), sys.argv[2:]))
