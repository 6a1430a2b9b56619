"""Hugging Face <-> hetron with real transformers models (tiny, random, made here from configs).

- the layouts megatron-core gives fused tensors, checked against its own attention split and its
  TP shards (pure);
- HF -> hetron: packed documents through hetron's GPTModel (DocumentAttention, per-document RoPE)
  give transformers' logits on each document alone, at TP1 and TP2, for Llama (GQA, Llama-3
  rope_scaling), Mistral (GQA) and Qwen2 (QKV bias, tied embeddings);
- HF -> hetron checkpoint -> HF reproduces every tensor bitwise and loads with no missing or
  unexpected keys;
- a model trained at PP2 by hetron, exported, gives hetron's logits and greedy generation;
- bad inputs: one line, exit 2, nothing written.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import error_lines, run_hetron

from pretrain.hf import tensor_map

FAMILIES = ("llama", "mistral", "qwen2")
TOL = 1e-4


# ----------------------------------------------------------------------------------- pure layouts


def test_fused_qkv_groups_query_heads_with_their_key_and_value():
    layout = tensor_map.Layout(num_attention_heads=4, num_query_groups=2, head_dim=3, vocab_size=5,
                               padded_vocab_size=8, tie_embeddings=False, qkv_bias=True)
    q = torch.arange(12.0)[:, None].repeat(1, 2)  # rows: head h holds 3h..3h+2
    k, v = 100 + torch.arange(6.0)[:, None].repeat(1, 2), 200 + torch.arange(6.0)[:, None].repeat(1, 2)
    fused = tensor_map.fuse_qkv(q, k, v, layout)
    # megatron's SelfAttention view: (groups, (heads/groups + 2) * head_dim) -> [q heads, k, v] per group
    rows = fused[:, 0].reshape(2, 4 * 3)
    assert rows[0].tolist() == [0, 1, 2, 3, 4, 5, 100, 101, 102, 200, 201, 202]
    assert rows[1].tolist() == [6, 7, 8, 9, 10, 11, 103, 104, 105, 203, 204, 205]
    assert all(torch.equal(a, b) for a, b in zip(tensor_map.split_qkv(fused, layout), (q, k, v)))
    # TP2: rank r holds query group r whole
    assert torch.equal(tensor_map.tensor_parallel_shard("qkv_weight", fused, 1, 2)[:, 0], rows[1])


def test_fc1_shards_hold_their_slice_of_gate_then_up():
    gate, up = torch.arange(8.0)[:, None], 10 + torch.arange(8.0)[:, None]
    whole = tensor_map.to_megatron("fc1", [gate, up], None)
    assert tensor_map.tensor_parallel_shard("fc1", whole, 1, 2)[:, 0].tolist() == [4, 5, 6, 7, 14, 15, 16, 17]
    assert all(torch.equal(a, b) for a, b in zip(tensor_map.to_hf("fc1", whole, None), (gate, up)))


def test_llama3_rope_scaling_equals_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from parallel.document_attention import rotary_inverse_frequencies
    from parallel.rope_scaling import scaled_inverse_frequencies
    from tests.hf_models import LLAMA3_SCALING

    config = LlamaConfig(hidden_size=128, num_attention_heads=2, rope_theta=500000.0, rope_scaling=LLAMA3_SCALING)
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    got = scaled_inverse_frequencies(rotary_inverse_frequencies(64, 500000.0), LLAMA3_SCALING)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("change, key", [
    ({"model_type": "gpt2"}, "model_type='gpt2'"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling.rope_type='yarn'"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"head_dim": 32}, "head_dim=32"),
    ({"num_hidden_layers": None}, "'num_hidden_layers' is missing"),
])
def test_unsupported_config_is_one_line_naming_the_key(change, key):
    from pretrain.errors import ConfigError
    from pretrain.hf.hf_config import hetron_model_fields

    config = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
              "intermediate_size": 96, "vocab_size": 300} | change
    with pytest.raises(ConfigError, match="config.json") as err:
        hetron_model_fields(config)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_a_sliding_window_shorter_than_the_context_is_refused_naming_both():
    from pretrain.errors import ConfigError
    from pretrain.hf.hf_config import check_sliding_window

    check_sliding_window({"model_type": "mistral", "sliding_window": 4096}, 4096)  # no effect: accepted
    check_sliding_window({"model_type": "qwen2", "sliding_window": 64, "use_sliding_window": False}, 4096)
    with pytest.raises(ConfigError, match=r"sliding_window=1024 is shorter than model.seq_length=4096"):
        check_sliding_window({"model_type": "mistral", "sliding_window": 1024}, 4096)


# ------------------------------------------------------------------------------ with real models


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    from tests.hf_models import make_model

    root = tmp_path_factory.mktemp("hf")
    return {family: make_model(family, root / family, seed=i) for i, family in enumerate(FAMILIES)}


@pytest.fixture(scope="module")
def token_inputs(tmp_path_factory) -> Path:
    gen = torch.Generator().manual_seed(7)
    documents = [torch.randint(0, 280, (n,), generator=gen).tolist() for n in (23, 61, 1, 40)]
    path = tmp_path_factory.mktemp("tokens") / "tokens.pt"
    torch.save({"documents": documents, "prompt": documents[0][:9], "new_tokens": 6}, path)
    return path


def hetron_outputs(tmp_path: Path, token_inputs: Path, sources: list[str], tensor: int = 1) -> dict:
    from launch.local import spawn_ranks

    out = tmp_path / f"hetron-tp{tensor}.pt"
    code = spawn_ranks("tests.hf_harness", [str(out), str(token_inputs), ",".join(sources), f"parallel.tensor={tensor}"],
                       tensor, tmp_path / f"logs-tp{tensor}")
    assert code == 0, (tmp_path / f"logs-tp{tensor}").glob("*")
    return torch.load(out)


def transformers_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def per_document_logits(model, documents: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(torch.tensor([doc])).logits[0] for doc in documents])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, small_corpus, imported_qwen2) -> Path:
    """A run trained 2 steps at PP2 from the imported Qwen2 (tied embeddings, QKV bias)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    proc = run_hetron(["train", f"init_from={imported_qwen2}", f"data.corpus={small_corpus / 'json'}",
                       f"run.dir={run}", "parallel.pipeline=2", "launch.nproc=2", "train.steps=2",
                       "checkpoint.every=2", "model.seq_length=128", "data.global_batch_tokens=1024",
                       "schedule.peak_lr=3e-3", "train.eval_every=0", "run.tensorboard=false", "run.plot=false",
                       "--no-progress"])
    assert proc.returncode == 0, proc.stderr
    return run


@pytest.fixture(scope="module")
def tp1_outputs(tmp_path_factory, hf_dirs, token_inputs, trained_run) -> dict:
    """One TP1 launch for every model: the three HF folders and the trained checkpoint."""
    checkpoint = max((trained_run / "checkpoints").glob("step_*"))
    sources = [f"hf:{hf_dirs[f]}" for f in FAMILIES] + [str(checkpoint)]
    return hetron_outputs(tmp_path_factory.mktemp("tp1"), token_inputs, sources) | {"checkpoint": str(checkpoint)}


def check_logits_per_document(results: dict, hf_dirs, token_inputs, tensor: int) -> None:
    documents = torch.load(token_inputs)["documents"]
    for family in FAMILIES:
        expected = per_document_logits(transformers_model(hf_dirs[family]), documents)
        got = results[f"hf:{hf_dirs[family]}"]["logits"]
        assert got.shape[0] == expected.shape[0] and got.shape[1] >= expected.shape[1]
        diff = (got[:, :expected.shape[1]] - expected).abs().max().item()
        assert diff <= TOL, f"{family} at TP{tensor}: max |logit difference| {diff:.2e}"
        # the training loss is the source model's: megatron's padded vocabulary rows take no part in it
        losses, start = results[f"hf:{hf_dirs[family]}"]["token_losses"], 0
        for doc in documents:
            if len(doc) > 1:
                reference = torch.nn.functional.cross_entropy(expected[start:start + len(doc) - 1],
                                                              torch.tensor(doc[1:]), reduction="none")
                assert (losses[start:start + len(doc) - 1] - reference).abs().max() <= TOL, f"{family} TP{tensor}"
            start += len(doc)


@pytest.mark.slow
def test_packed_logits_equal_transformers_per_document_at_tp1(hf_dirs, token_inputs, tp1_outputs):
    check_logits_per_document(tp1_outputs, hf_dirs, token_inputs, 1)


@pytest.mark.slow
def test_packed_logits_equal_transformers_per_document_at_tp2(tmp_path, hf_dirs, token_inputs):
    results = hetron_outputs(tmp_path, token_inputs, [f"hf:{hf_dirs[f]}" for f in FAMILIES], 2)
    check_logits_per_document(results, hf_dirs, token_inputs, 2)


@pytest.fixture(scope="module")
def imported_qwen2(tmp_path_factory, hf_dirs) -> Path:
    out = tmp_path_factory.mktemp("imported") / "qwen2-ckpt"
    proc = run_hetron(["import-hf", str(hf_dirs["qwen2"]), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    return out


def load_quietly_checking_keys(folder: Path):
    """transformers' model, failing on any load report of missing, unexpected or mismatched keys."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    AutoTokenizer.from_pretrained(str(folder))
    return model.eval()


@pytest.mark.slow
def test_round_trip_reproduces_every_tensor_bitwise(tmp_path, hf_dirs, imported_qwen2):
    from safetensors.torch import load_file

    out = tmp_path / "exported"
    proc = run_hetron(["export-hf", str(imported_qwen2), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    original, exported = load_file(hf_dirs["qwen2"] / "model.safetensors"), load_file(out / "model.safetensors")
    assert sorted(original) == sorted(exported)
    assert [k for k in original if not torch.equal(original[k], exported[k])] == []
    before, after = (json.loads((d / "config.json").read_text()) for d in (hf_dirs["qwen2"], out))
    assert {k: (before.get(k), after.get(k)) for k in before if before.get(k) != after.get(k)} == {}
    load_quietly_checking_keys(out)


@pytest.mark.slow
def test_model_trained_at_pp2_exports_to_its_logits_and_generation(tmp_path, hf_dirs, token_inputs, trained_run,
                                                                     tp1_outputs):
    out = tmp_path / "exported"
    proc = run_hetron(["export-hf", str(trained_run), "--out", str(out), "--max-shard-size", "100KB"])
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    ours = tp1_outputs[tp1_outputs["checkpoint"]]
    model = load_quietly_checking_keys(out)
    inputs = torch.load(token_inputs)
    expected = per_document_logits(model, inputs["documents"])
    diff = (ours["logits"][:, :expected.shape[1]] - expected).abs().max().item()
    assert diff <= TOL, f"max |logit difference| {diff:.2e}"
    before = per_document_logits(transformers_model(hf_dirs["qwen2"]), inputs["documents"])
    assert (before - expected).abs().max() > 100 * TOL  # training changed the weights
    prompt = torch.tensor([inputs["prompt"]])
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=inputs["new_tokens"], do_sample=False)[0, prompt.shape[1]:]
    assert generated.tolist() == ours["generated"][:len(generated)]


def test_hetron_bpe_tokenizer_exports_as_a_transformers_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from data.tokenizer import EOS, PAD, train_bpe
    from pretrain.hf.exporter import write_tokenizer
    from tests.hf_models import sample_text

    tok = train_bpe([sample_text()], 300)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "out").mkdir()
    ids = write_tokenizer(tmp_path / "tokenizer.json", tmp_path / "out", 300)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert ids == {"bos_token_id": None, "eos_token_id": tok.token_to_id(EOS), "pad_token_id": tok.token_to_id(PAD)}
    assert loaded.eos_token == EOS and loaded("def f(x):").input_ids == tok.encode("def f(x):").ids


def test_prepare_with_a_hugging_face_tokenizer_follows_its_bos_and_eos(tmp_path, hf_dirs):
    from streaming import StreamingDataset
    from tokenizers import Tokenizer

    from data.prepare import prepare_shards
    from tests.hf_models import sample_text

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"doc{i}.py").write_text(sample_text()[i * 300:(i + 1) * 300])
    manifest = prepare_shards(str(corpus), tmp_path / "shards", max_context=512, eval_fraction=0.3,
                              tokenizer_path=str(hf_dirs["llama"]), progress=False)
    tok = Tokenizer.from_file(str(hf_dirs["llama"] / "tokenizer.json"))
    assert (manifest.eos_id, manifest.pad_id) == (tok.token_to_id("</s>"), tok.token_to_id("</s>"))
    assert (tmp_path / "shards" / "tokenizer_config.json").is_file()  # later stages keep the convention
    sample = StreamingDataset(local=str(tmp_path / "shards" / "train"), shuffle=False, batch_size=1)[0]["tokens"]
    assert sample[0] == tok.token_to_id("<s>") and sample[-1] == manifest.eos_id


# ------------------------------------------------------------------------------------ bad inputs


def _copy_model(src: Path, dst: Path, *, weights: bool = True) -> Path:
    import shutil

    dst.mkdir()
    for f in src.iterdir():
        if weights or not f.name.endswith(".safetensors"):
            shutil.copy2(f, dst / f.name)
    return dst


def _bad_import_folder(case: str, llama: Path, tmp: Path) -> tuple[Path, str]:
    from tests.hf_models import rewrite_config

    if case == "missing config":
        folder = _copy_model(llama, tmp / "m")
        (folder / "config.json").unlink()
        return folder, "holds no config.json"
    if case == "missing weights":
        return _copy_model(llama, tmp / "m", weights=False), "holds no weights"
    folder = _copy_model(llama, tmp / "m")
    if case == "unsupported architecture":
        rewrite_config(folder, model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"])
        return folder, "model_type='gpt_neox' is not supported"
    if case == "unsupported rope type":
        rewrite_config(folder, rope_scaling={"rope_type": "yarn", "factor": 4.0})
        return folder, "rope_scaling.rope_type='yarn' is not supported"
    raise ValueError(case)


def assert_one_line_error(proc, expected: str) -> None:
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and expected in lines[0], proc.stderr


@pytest.mark.parametrize("case", ["missing config", "missing weights", "unsupported architecture",
                                  "unsupported rope type"])
def test_bad_model_folder_is_one_line_and_writes_nothing(tmp_path, hf_dirs, case):
    folder, expected = _bad_import_folder(case, hf_dirs["llama"], tmp_path)
    out = tmp_path / "out" / "ckpt"
    proc = run_hetron(["import-hf", str(folder), "--out", str(out)])
    assert_one_line_error(proc, expected)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_unsupported_rope_type_stops_training_before_anything_is_written(tmp_path, hf_dirs):
    folder, expected = _bad_import_folder("unsupported rope type", hf_dirs["llama"], tmp_path)
    proc = run_hetron(["train", f"init_from=hf:{folder}", f"run.dir={tmp_path / 'run'}", "--no-progress"])
    assert_one_line_error(proc, expected)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_tokenizer_that_disagrees_with_the_shards_is_one_line(tmp_path, hf_dirs, small_shards):
    proc = run_hetron(["train", f"init_from=hf:{hf_dirs['llama']}", f"data.shards={small_shards}",
                       f"run.dir={tmp_path / 'run'}", "model.seq_length=256", "--no-progress"])
    assert_one_line_error(proc, "does not match the tokenizer the shards")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_tokenizer_other_than_the_models_is_one_line(tmp_path, hf_dirs):
    proc = run_hetron(["train", f"init_from=hf:{hf_dirs['llama']}", f"data.tokenizer={hf_dirs['qwen2']}",
                       f"run.dir={tmp_path / 'run'}", "--no-progress"])
    assert_one_line_error(proc, f"data.tokenizer={hf_dirs['qwen2']} is not the tokenizer of init_from=hf:")
    assert not (tmp_path / "run").exists()


def test_export_of_a_folder_without_checkpoints_or_into_a_used_folder_is_one_line(tmp_path, imported_qwen2):
    proc = run_hetron(["export-hf", str(tmp_path), "--out", str(tmp_path / "exported")])
    assert_one_line_error(proc, "holds no complete checkpoint")
    assert not (tmp_path / "exported").exists()
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    proc = run_hetron(["export-hf", str(imported_qwen2), "--out", str(used)])
    assert_one_line_error(proc, "already exists and is not empty")
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_safetensors_reader_gives_the_library_s_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    from pretrain.hf.weight_files import HfWeightReader

    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16), "c": torch.arange(4, dtype=torch.int64),
               "d": torch.randn(2, 2).half()}
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    reader, expected = HfWeightReader(tmp_path), load_file(tmp_path / "model.safetensors")
    assert reader.names() == set(expected)
    for name, tensor in expected.items():
        got = reader.get(name)
        assert got.dtype == tensor.dtype and torch.equal(got, tensor)
