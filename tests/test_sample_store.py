"""The length index and per-rank reads (data.sample_store) on real mosaicml-streaming shards."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from data.loader import GlobalBatchLoader, open_split
from data.packing import micro_batches_for_rank
from data.sample_store import LENGTH_INDEX, SampleSource, load_length_index, write_length_index
from pretrain.errors import HetronError


def every_sample(split) -> list[np.ndarray]:
    dataset = open_split(split, shuffle=False, seed=0)
    return [np.asarray(dataset.get_item(i)["tokens"]) for i in range(dataset.num_samples)]


def test_prepare_writes_the_length_of_every_sample(small_shards):
    for split in ("train", "eval"):
        lengths = load_length_index(small_shards / split)
        assert lengths.tolist() == [len(s) - 1 for s in every_sample(small_shards / split)]
        assert len(set(lengths.tolist())) > 3  # documents of several lengths, chunks of the longest


def test_batches_are_formed_from_lengths_and_each_rank_reads_only_its_share(small_shards):
    budget, ranks = 4096, 4
    loader = GlobalBatchLoader(small_shards / "train", budget, seed=5)
    batches = [loader.next_batch() for _ in range(3)]
    assert all(b.read_samples == 0 for b in batches)  # formed and sized without a read
    # the same batches as reading every sample in the same order would give
    reference = GlobalBatchLoader(small_shards / "train", budget, seed=5)
    for batch in batches:
        ref = reference.next_batch()
        assert batch.lengths == [len(ref[i]) - 1 for i in range(len(ref))]
        assert [s.tolist() for s in ref] == [batch[i].tolist() for i in range(len(batch))]
    for batch_index in range(3):
        read = []
        for rank in range(ranks):
            fresh = GlobalBatchLoader(small_shards / "train", budget, seed=5)
            batch = [fresh.next_batch() for _ in range(batch_index + 1)][-1]
            mbs = micro_batches_for_rank(batch, 256, rank, ranks, pad_id=0)
            mine = sorted(i for mb in mbs for i in mb.sample_ids)
            assert sorted(batch._read) == mine  # read exactly the samples it trains on
            assert batch.read_tokens == sum(batch.lengths[i] + 1 for i in mine)
            read += mine
        assert sorted(read) == list(range(len(batch)))  # together the ranks read the batch once
        assert max(len(batch.lengths), 1) > ranks  # a batch larger than one rank's share


def test_missing_index_is_built_once_from_the_samples(small_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(small_shards, shards)
    expected = load_length_index(shards / "train")
    (shards / "train" / LENGTH_INDEX).unlink()
    assert load_length_index(shards / "train").tolist() == expected.tolist()
    assert (shards / "train" / LENGTH_INDEX).is_file()
    assert np.load(shards / "train" / LENGTH_INDEX).tolist() == expected.tolist()


def test_stale_corrupt_and_wrong_indexes_are_refused(small_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(small_shards, shards)
    split = shards / "train"
    lengths = load_length_index(split)
    write_length_index(split, lengths[:-1])
    with pytest.raises(HetronError, match=rf"length index {split / LENGTH_INDEX} has {len(lengths) - 1} entries"):
        load_length_index(split)
    (split / LENGTH_INDEX).write_bytes(b"not numpy")
    with pytest.raises(HetronError, match="is corrupt"):
        load_length_index(split)
    wrong = lengths.copy()
    wrong[3] += 1
    source = SampleSource(open_split(split, shuffle=False, seed=0), wrong, str(split))
    with pytest.raises(HetronError, match=r"sample 3 holds .* the index is stale"):
        source.read(3)
    assert source.read(2).size == lengths[2] + 1
