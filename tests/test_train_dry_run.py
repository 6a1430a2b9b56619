"""`hetron train --print-config` / `--dry-run` and `hetron submit --dry-run`: they check every input path
and describe the run, writing nothing; the resolved config (preset filled in) is what run folders keep."""
from __future__ import annotations

import pytest
import yaml

from data.shard_cache import ensure_shards
from pretrain.architecture import PRESETS
from pretrain.config import DataConfig, config_yaml, dump_config, load_config
from pretrain.errors import HetronError
from conftest import error_lines
from test_cli_startup import heavy, run_with_import_list


def files_under(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def test_print_config_is_the_resolved_config_and_loads_back(tmp_path):
    proc, imported = run_with_import_list(
        ["train", "--print-config", "model.preset=125m", "train.steps=7", "model.num_layers=4"])
    assert proc.returncode == 0, proc.stderr
    assert heavy(imported) == []
    tree = yaml.safe_load(proc.stdout)
    assert tree["train"]["steps"] == 7 and tree["schedule"]["total_steps"] == 7
    assert tree["model"]["num_layers"] == 4  # the explicit key
    assert tree["model"]["hidden_size"] == PRESETS["125m"]["hidden_size"]  # the preset's, written out
    assert None not in [tree["model"][k] for k in PRESETS["125m"]]
    saved = tmp_path / "printed.yaml"
    saved.write_text(proc.stdout)
    assert config_yaml(load_config(str(saved))) == proc.stdout  # the same run, loaded again


def test_saved_config_holds_the_preset_architecture(tmp_path):
    cfg = load_config(None, ["model.preset=1b"])
    dump_config(cfg, tmp_path / "config.yaml")
    model = yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]
    assert {k: model[k] for k in PRESETS["1b"]} == PRESETS["1b"]


def test_dry_run_describes_and_writes_nothing(tmp_path, small_corpus):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    args = ["train", "--dry-run", f"run.dir={run_dir}", f"data.corpus={small_corpus}", "launch.nproc=2"]
    proc = run_with_import_list(args, env={"HETRON_CACHE": str(cache)})[0]
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "2 local rank(s)" in out and f"run folder: {run_dir} (to be created)" in out
    assert f"to be prepared from data.corpus={small_corpus}" in out
    assert "3.6M parameters" in out and "0.0374 GFLOP per token" in out
    assert "memory per rank, fp32 (on CPU)" in out and "nothing written" in out
    assert not run_dir.exists() and files_under(cache) == []


@pytest.mark.parametrize("command", ["train", "submit"])
@pytest.mark.parametrize("override, message", [
    ("data.corpus=/path/to/corpus.jsonl", "data.corpus=/path/to/corpus.jsonl is the recipe's placeholder"),
    ("data.corpus=/no/such/corpus", "data.corpus=/no/such/corpus does not exist"),
    ("data.tokenizer=/no/tokenizer.json", "data.tokenizer=/no/tokenizer.json: no such file"),
    ("init_from=/no/run", "init_from='/no/run': no such checkpoint or run folder"),
])
def test_dry_runs_check_every_input_path_before_torch(tmp_path, command, override, message):
    run_dir = tmp_path / "run"
    proc, imported = run_with_import_list([command, "--dry-run", f"run.dir={run_dir}", override],
                                          env={"HETRON_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = error_lines(proc.stderr)
    assert message in line
    assert heavy(imported) == [] and not run_dir.exists()


def test_submit_refuses_the_recipe_placeholder_corpus(tmp_path):
    proc, imported = run_with_import_list(["submit", "--dry-run", "--time", "600", "125m", f"run.dir={tmp_path / 'r'}"])
    assert proc.returncode == 2
    (line,) = error_lines(proc.stderr)
    assert line.startswith("hetron submit: error: data.corpus=/path/to/corpus.jsonl is the recipe's placeholder")
    assert heavy(imported) == []


def test_shards_folder_without_manifest_is_named(tmp_path):
    proc = run_with_import_list(["train", "--dry-run", f"data.shards={tmp_path}"])[0]
    assert proc.returncode == 2
    assert f"data.shards={tmp_path}: no prepared shards there" in error_lines(proc.stderr)[0]


def test_preparing_is_announced_only_after_the_corpus_is_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HETRON_CACHE", str(tmp_path))
    with pytest.raises(HetronError, match="data.corpus=/no/such/dir does not exist"):
        ensure_shards(DataConfig(corpus="/no/such/dir"), 256)
    assert "preparing" not in capsys.readouterr().out
    assert files_under(tmp_path) == []


def test_train_refuses_a_missing_corpus_before_writing(tmp_path):
    run_dir = tmp_path / "run"
    proc, imported = run_with_import_list(["train", f"run.dir={run_dir}", "data.corpus=/no/such/dir"],
                                          env={"HETRON_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2
    assert "preparing" not in proc.stdout
    (line,) = error_lines(proc.stderr)
    assert "data.corpus=/no/such/dir does not exist" in line
    assert heavy(imported) == [] and not run_dir.exists()


def test_activation_estimate_follows_micro_batch_tokens_and_recomputation():
    from pretrain.architecture import resolve_model
    from pretrain.dry_run import activation_bytes

    def estimate(*overrides):
        cfg = load_config(None, list(overrides))
        return activation_bytes(cfg, resolve_model(cfg.model, cfg.parallel), bf16=True)

    # 12 layers x 1024 tokens x hidden 128 x (34 + 5 x 4 heads x 1024 / 128) bytes (Korthikanti et al.)
    assert estimate() == 12 * 1024 * 128 * (34 + 5 * 4 * 1024 / 128)
    assert estimate("train.micro_batch_tokens=4096") == 4 * estimate()
    one_layer = estimate() / 12
    assert estimate("train.recompute_granularity=full") == 12 * 1024 * 128 * 2 + one_layer
    assert estimate("train.recompute_granularity=full", "train.recompute_method=block",
                    "train.recompute_num_layers=6") == 6 * 1024 * 128 * 2 + 7 * one_layer


def test_dry_run_is_refused_on_a_folder_another_run_holds(tmp_path):
    import json
    import os
    import socket

    from pretrain.run_lock import LOCK_FILE

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": "", "started": "now"}
    (run_dir / LOCK_FILE).write_text(json.dumps(owner))  # held by this (live) test process
    proc = run_with_import_list(["train", "--dry-run", f"run.dir={run_dir}"])[0]
    assert proc.returncode == 2
    (line,) = error_lines(proc.stderr)
    assert f"run.dir={run_dir} is in use by another run (pid {os.getpid()}" in line
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]
