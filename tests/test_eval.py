"""Held-out loss on small corpora: at least one eval document whenever there are two, and a real
loss when the eval split holds fewer samples than there are ranks."""
from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
from conftest import TINY, error_lines, run_hetron

from data.prepare import eval_documents


def test_a_small_corpus_always_holds_one_document_out():
    names = [f"pkg/module_{i}.py" for i in range(78)]
    assert len(eval_documents(names, 0.02)) >= 1
    assert len(eval_documents(names[:2], 0.02)) == 1
    assert len(eval_documents(names[:2], 0.49)) <= 1  # never all of them
    assert eval_documents(names, 0.02) == eval_documents(list(reversed(names)), 0.02)  # order-free
    assert eval_documents(names[:1], 0.02) == set()


@pytest.fixture(scope="module")
def few_documents(tmp_path_factory) -> Path:
    """Seven short documents (one sample each at context 256): at eval fraction 0.02 the hash alone
    would hold none out."""
    root = tmp_path_factory.mktemp("few-docs")
    text = (Path(sysconfig.get_paths()["stdlib"]) / "json" / "encoder.py").read_text()
    for i in range(7):
        (root / f"part_{i}.py").write_text(text[i * 400:(i + 1) * 400])
    return root


@pytest.mark.slow
def test_one_eval_sample_on_two_ranks_is_a_real_loss(tmp_path, few_documents):
    shards = tmp_path / "shards"
    prep = run_hetron(["prepare", "--corpus", str(few_documents), "--out", str(shards), "--vocab-size", "300",
                       "--max-context", "256", "--eval-fraction", "0.02"])
    assert prep.returncode == 0, prep.stderr[-2000:]
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["splits"]["eval"]["documents"] == 1 and manifest["splits"]["eval"]["samples"] == 1
    losses = {}
    for nproc in (1, 2):
        run = tmp_path / f"run{nproc}"
        proc = run_hetron(["train", f"run.dir={run}", f"data.shards={shards}", *TINY, "model.seq_length=256",
                           "data.global_batch_tokens=512", "train.steps=1", "train.eval_every=1", "train.eval_batches=2",
                           f"launch.nproc={nproc}"])
        assert proc.returncode == 0, proc.stderr[-2000:]
        row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        losses[nproc] = row["eval_loss"]
    assert losses[1] > 1.0  # a real cross-entropy (vocab 300: ~5.7 at init), not 0.0
    assert losses[2] == pytest.approx(losses[1], rel=1e-5)


def test_a_single_document_corpus_is_one_line(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "only.py").write_text("print('hello world')\n" * 20)
    proc = run_hetron(["prepare", "--corpus", str(tmp_path / "c"), "--out", str(tmp_path / "s"), "--vocab-size", "300"])
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "1 document(s)" in lines[0] and "held out" in lines[0]
    assert not (tmp_path / "s").exists()
