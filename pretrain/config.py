"""The run config: typed dataclasses, loaded from YAML, overridden by `dotted.key=value` arguments,
validated before any work. Every error names the dotted key and what is allowed.

Pure Python (no torch, megatron-core or streaming): `hetron train --help` and a bad key answer before
any of those is imported (tests/test_cli_startup.py)."""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pretrain.errors import ConfigError
from pretrain.schedules import ScheduleSpec
from pretrain.stages import ReplayConfig, StageConfig, fill_stage_defaults, validate_stages

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
MODEL_PRESETS = ("tiny", "125m", "1b", "7b")
DEFAULT_SCHEDULE = {"kind": "cosine", "peak_lr": 3e-3, "min_lr": 3e-4}


@dataclass
class RunConfig:
    dir: str = "runs/default"
    log_every: int = 1
    tensorboard: bool = True
    plot: bool = True
    progress: bool = True
    peak_tflops: float = 0.0  # one device's peak, for MFU; 0: a known GPU's dense bf16 peak (none on CPU)
    profile_steps: list[int] = field(default_factory=list)  # e.g. 10,11: torch.profiler traces in run.dir/profile/
    wandb: bool = False  # Weights & Biases logging beside JSONL and TensorBoard (rank 0; files in run.dir/wandb/)
    wandb_mode: str = "offline"  # offline (files only, `wandb sync` later) | online (needs `wandb login`)
    wandb_project: str = "hetron"


@dataclass
class ModelConfig:
    """Architecture. `preset` fills every field left at None (see pretrain.architecture.PRESETS)."""

    preset: str = "tiny"
    num_layers: int | None = None
    hidden_size: int | None = None
    num_attention_heads: int | None = None
    num_query_groups: int | None = None
    ffn_hidden_size: int | None = None
    seq_length: int | None = None
    normalization: str | None = None  # RMSNorm | LayerNorm
    activation: str | None = None  # swiglu | gelu
    position_embedding: str | None = None  # rope | learned
    rotary_base: float = 10000.0
    init_method_std: float = 0.02
    tie_embeddings: bool = False
    dropout: float = 0.0
    spec: str = "auto"  # auto (TE when importable on GPU) | local | te
    attention: str = "auto"  # auto (te where it can run, else document) | document | te
    # Set from the Hugging Face config.json by init_from=hf:DIR (pretrain/hf); megatron's defaults otherwise.
    vocab_size: int | None = None  # embedding rows before padding; None: the tokenizer's vocabulary
    norm_epsilon: float = 1e-5
    qkv_bias: bool = False  # bias on the query/key/value projection only (Qwen2)
    rope_scaling: dict | None = None  # Hugging Face's rope_scaling dict (rope_type default | llama3)


@dataclass
class DataConfig:
    corpus: str = "stdlib"  # a directory, a .jsonl file, or 'stdlib'
    shards: str = ""  # prepared shards folder; empty: a cache folder keyed by corpus and settings
    tokenizer: str = ""  # a tokenizer.json; empty: train a byte-level BPE on the corpus
    vocab_size: int = 4096
    eval_fraction: float = 0.02
    text_field: str = "text"
    global_batch_tokens: int = 16384
    shuffle: bool = True


@dataclass
class TrainConfig:
    steps: int = 150
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    eval_every: int = 50
    eval_batches: int = 4
    # activation recomputation, megatron's: none | full (whole layers) | selective (the core attention)
    recompute_granularity: str = "none"
    recompute_method: str = "uniform"  # full: uniform (chunks of recompute_num_layers) | block (the first N per stage)
    recompute_num_layers: int = 0  # full: 0 = 1 layer per chunk (uniform) or every layer of a stage (block)
    micro_batch_tokens: int = 0  # tokens packed into one micro-batch (sp.mode=off); 0: model.seq_length


@dataclass
class ParallelConfig:
    tensor: int = 1
    pipeline: int = 1
    distributed_optimizer: bool = True
    overlap_grad_reduce: bool = False


@dataclass
class CheckpointConfig:
    every: int = 50
    keep: int = 3
    dir: str = ""  # empty: <run.dir>/checkpoints
    override_schedule: bool = False  # resume with this config's LR schedule even if the checkpoint's differs


@dataclass
class LaunchConfig:
    nproc: int = 2  # local ranks spawned when not already inside a distributed launch
    backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | nccl | gloo
    master_port: int = 0  # 0: pick a free port
    threads_per_rank: int = 0  # torch intra-op threads; 0: cores / ranks
    # a collective that waits longer than this fails every rank (a dead rank or node ends the job)
    timeout_s: float = 600.0


@dataclass
class SequenceParallelConfig:
    """Ulysses sequence parallelism inside the data-parallel ranks (parallel.ulysses)."""

    mode: str = "off"  # off (plain data parallel) | static (one group size) | adaptive (the planner)
    degree: int = 2  # group size in static mode
    tokens_per_rank: int = 0  # activation capacity of a rank per micro-batch; 0: model.seq_length
    # auto (FlexSP's 7B constants scaled to this model, uncalibrated), a preset of that architecture
    # (7b, 13b, 30b), or a JSON file written by `hetron calibrate`
    cost_model: str = "auto"
    # hard limit of the per-step solve (planned a step ahead, in the step's shadow); 0: from the step,
    # budget_fraction of the last step's time within budget_min_s..budget_max_s
    time_budget_s: float = 0.0
    budget_fraction: float = 0.5
    budget_min_s: float = 0.05
    budget_max_s: float = 5.0
    solver: str = "highs"  # highs | cbc | none (fast path only)


REWEIGHT_STRATEGIES = ("uniform", "linupper", "quadratic", "extremes")
REWEIGHT_OBJECTIVES = ("tokens", "samples")
REWEIGHT_SCOPES = ("batch", "microbatch")


@dataclass
class ReweightConfig:
    """Loss-based sample reweighting (pretrain.reweighting)."""

    strategy: str = "uniform"  # uniform (off) | linupper | quadratic | extremes
    r: float = 0.4  # strength / temperature: smaller is sharper; inf gives uniform weights
    delta: float = 1.0
    burn_in_steps: int = 0  # plain uniform weights for the first steps
    r_warmup: int = 0  # after burn-in, this many steps at r_warmup_value before r
    r_warmup_value: float = 100.0
    objective: str = "tokens"  # tokens: sum_i w_i (n_i / mean n) l_i | samples: sum_i w_i l_i
    # batch: weights over the global batch (a forward-only pass first) | microbatch: over each
    # micro-batch gathered across data-parallel ranks, in the one ordinary pass (the authors' way)
    scope: str = "batch"

    def validate(self, prefix: str = "reweight") -> None:
        if self.strategy not in REWEIGHT_STRATEGIES:
            raise ConfigError(f"{prefix}.strategy={self.strategy!r} is not one of {', '.join(REWEIGHT_STRATEGIES)}")
        if not self.r > 0:
            raise ConfigError(f"{prefix}.r={self.r} must be positive (inf for uniform weights)")
        if not self.delta > 0:
            raise ConfigError(f"{prefix}.delta={self.delta} must be positive")
        if self.burn_in_steps < 0 or self.r_warmup < 0:
            raise ConfigError(f"{prefix}.burn_in_steps and {prefix}.r_warmup must be >= 0")
        if self.objective not in REWEIGHT_OBJECTIVES:
            raise ConfigError(f"{prefix}.objective={self.objective!r} is not one of {', '.join(REWEIGHT_OBJECTIVES)}")
        if self.scope not in REWEIGHT_SCOPES:
            raise ConfigError(f"{prefix}.scope={self.scope!r} is not one of {', '.join(REWEIGHT_SCOPES)}")
        if not self.r_warmup_value > 0:
            raise ConfigError(f"{prefix}.r_warmup_value={self.r_warmup_value} must be positive")

    @property
    def enabled(self) -> bool:
        return self.strategy != "uniform"


LISA_STATE_POLICIES = ("reset", "offload")
WANDB_MODES = ("offline", "online")


@dataclass
class LisaConfig:
    """LISA layer sampling (pretrain.lisa)."""

    layers: int = 0  # gamma: transformer layers trained per interval (per pipeline stage); 0 = LISA off
    interval: int = 20  # K: steps between switches
    state: str = "offload"  # offload (kept on the host, restored on return) | reset: a leaving layer's Adam state

    @property
    def enabled(self) -> bool:
        return self.layers > 0

    def validate(self, num_layers: int, pipeline: int = 1, prefix: str = "lisa") -> None:
        if self.layers < 0:
            raise ConfigError(f"{prefix}.layers={self.layers} must be >= 0 (0 turns LISA off)")
        if self.interval < 1:
            raise ConfigError(f"{prefix}.interval={self.interval} must be >= 1 (steps between layer switches)")
        if self.state not in LISA_STATE_POLICIES:
            raise ConfigError(f"{prefix}.state={self.state!r} is not one of {', '.join(LISA_STATE_POLICIES)}")
        if self.layers > num_layers:
            raise ConfigError(f"{prefix}.layers={self.layers} is larger than the model's {num_layers} layers "
                              f"(model.num_layers); use at most {num_layers}")
        per_stage = num_layers // max(pipeline, 1)
        if self.enabled and pipeline > 1 and self.layers > per_stage:
            raise ConfigError(f"{prefix}.layers={self.layers} is larger than the {per_stage} layers of each of the "
                              f"{pipeline} pipeline stages (LISA samples per stage); use at most {per_stage}")


@dataclass
class ForecastConfig:
    """The live scaling-law forecast (pretrain.live_forecast)."""

    every: int = 0  # 0: off
    law: str = "mpl"  # mpl (multi-power) | anneal

    def validate(self, prefix: str = "forecast") -> None:
        if self.every < 0:
            raise ConfigError(f"{prefix}.every={self.every} must be >= 0 (0 disables the forecast)")
        if self.law not in ("mpl", "anneal"):
            raise ConfigError(f"{prefix}.law={self.law!r} is not one of mpl, anneal")


@dataclass
class Config:
    seed: int = 1234
    resume: str = "auto"  # auto (newest if any) | latest (newest, must exist) | never | a checkpoint folder
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    schedule: ScheduleSpec = field(default_factory=lambda: ScheduleSpec(**DEFAULT_SCHEDULE, total_steps=TrainConfig.steps,
                                                                      warmup_steps=TrainConfig.steps // 10))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    reweight: ReweightConfig = field(default_factory=ReweightConfig)
    lisa: LisaConfig = field(default_factory=LisaConfig)
    stages: list[StageConfig] = field(default_factory=list)  # continual pretraining; empty: one run on `data`
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    init_from: str = ""  # start from an earlier run's checkpoint (or run folder): its weights, step 0
    init_optimizer: str = "keep"  # keep | reset: the optimizer state of init_from
    sp: SequenceParallelConfig = field(default_factory=SequenceParallelConfig)
    forecast: ForecastConfig = field(default_factory=ForecastConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else Path(self.run.dir) / "checkpoints"


# ---------------------------------------------------------------------------------------------
# loading


class ConfigYamlLoader(yaml.SafeLoader):
    """YAML as config files and overrides mean it: only true/false are booleans (YAML 1.2), so
    `sp.mode=off` or `mode: off` stays the text "off" instead of YAML 1.1's False. Every value is
    then read against its field's declared type (_coerce), where a bool field still takes
    yes/no/on/off."""


ConfigYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigYamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                       list("tTfF"))


def read_config_yaml(text: str) -> Any:
    return yaml.load(text, Loader=ConfigYamlLoader)  # noqa: S506 - a SafeLoader subclass


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is list:
        if isinstance(value, (str, int)) and not isinstance(value, bool):  # key=10,11 or key=10
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} must be a list")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}={value!r} must be an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "3e-4" as a string
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r} must be a number")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}={value!r} must be a string")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    return value


def _build(cls, values: Any, prefix: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix} must be a mapping of keys, got {values!r}")
    if cls is ScheduleSpec:
        return ScheduleSpec.from_dict(values, prefix)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {dotted!r}; keys here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def _parse_override(arg: str) -> tuple[list[str], Any]:
    if "=" not in arg:
        raise ConfigError(f"argument {arg!r} is not key=value (e.g. train.steps=40)")
    key, raw = arg.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"argument {arg!r} has an empty key")
    try:
        value = read_config_yaml(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_dotted(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path)}: {part} is a value, not a section")
        node = child
    node[path[-1]] = value


def resolve_config_path(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    candidate = CONFIG_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if candidate.is_file():
        return candidate
    raise ConfigError(f"config file {name!r} not found (nor {candidate})")


def load_yaml(path: Path) -> dict:
    try:
        raw = read_config_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return raw


def load_config(config_file: str | None = None, overrides: list[str] = ()) -> Config:
    """YAML (optional) + dotted overrides -> a validated Config."""
    tree: dict = load_yaml(resolve_config_path(config_file)) if config_file else {}
    for arg in overrides:
        path, value = _parse_override(arg)
        _set_dotted(tree, path, value)
    fill_stage_defaults(tree, DEFAULT_SCHEDULE, DataConfig.global_batch_tokens)
    schedule = tree.get("schedule", {})
    if isinstance(schedule, dict):
        # Unset schedule keys keep Config's defaults; the schedule spans the run unless told otherwise.
        schedule = {**DEFAULT_SCHEDULE, **schedule}
        train = tree.get("train", {})
        steps = train.get("steps", TrainConfig.steps) if isinstance(train, dict) else TrainConfig.steps
        # A non-positive train.steps is reported under its own key by validate().
        schedule.setdefault("total_steps", max(1, steps) if isinstance(steps, int) else steps)
        if isinstance(schedule["total_steps"], int):
            schedule.setdefault("warmup_steps", schedule["total_steps"] // 10)
        tree["schedule"] = schedule
    config = _build(Config, tree, "")
    if config.init_from:
        from pretrain.hf.hf_config import apply_init_model

        apply_init_model(config)  # an imported model's architecture (and default tokenizer)
    validate(config)
    return config


def validate(cfg: Config) -> None:
    """Checks across keys that the types alone cannot express."""
    def positive(key: str, value: int | float) -> None:
        if value <= 0:
            raise ConfigError(f"{key}={value} must be positive")

    if cfg.model.preset not in MODEL_PRESETS:
        raise ConfigError(f"model.preset={cfg.model.preset!r} is not one of {', '.join(MODEL_PRESETS)}")
    positive("train.steps", cfg.train.steps)
    positive("data.global_batch_tokens", cfg.data.global_batch_tokens)
    positive("data.vocab_size", cfg.data.vocab_size)
    positive("checkpoint.every", cfg.checkpoint.every)
    positive("checkpoint.keep", cfg.checkpoint.keep)
    positive("launch.nproc", cfg.launch.nproc)
    positive("launch.timeout_s", cfg.launch.timeout_s)
    positive("parallel.tensor", cfg.parallel.tensor)
    positive("parallel.pipeline", cfg.parallel.pipeline)
    positive("run.log_every", cfg.run.log_every)
    if any(step < 1 or step > cfg.train.steps for step in cfg.run.profile_steps):
        raise ConfigError(f"run.profile_steps={','.join(map(str, cfg.run.profile_steps))}: steps count from 1 to "
                          f"train.steps={cfg.train.steps}")
    if cfg.run.wandb_mode not in WANDB_MODES:
        raise ConfigError(f"run.wandb_mode={cfg.run.wandb_mode!r} is not one of {', '.join(WANDB_MODES)}")
    if cfg.run.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("run.wandb=true needs the wandb package: pip install 'hetron[wandb]' (or set run.wandb=false)")
    if cfg.run.peak_tflops < 0:
        raise ConfigError(f"run.peak_tflops={cfg.run.peak_tflops} must be >= 0 (0: the known peak of the GPU, if any)")
    if cfg.train.eval_every < 0 or cfg.train.eval_batches < 0:
        raise ConfigError("train.eval_every and train.eval_batches must be >= 0 (0 disables eval)")
    if cfg.train.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"train.precision={cfg.train.precision!r} is not one of auto, bf16, fp32")
    if cfg.launch.backend not in ("auto", "nccl", "gloo"):
        raise ConfigError(f"launch.backend={cfg.launch.backend!r} is not one of auto, nccl, gloo")
    if not 0.0 < cfg.data.eval_fraction < 0.5:
        raise ConfigError(f"data.eval_fraction={cfg.data.eval_fraction} must lie in (0, 0.5)")
    if cfg.schedule.total_steps < cfg.train.steps:
        raise ConfigError(
            f"schedule.total_steps={cfg.schedule.total_steps} is shorter than train.steps={cfg.train.steps}"
        )
    if not (cfg.resume in ("auto", "latest", "never") or Path(cfg.resume).exists()):
        raise ConfigError(f"resume={cfg.resume!r}: no such checkpoint folder (or use auto | latest | never)")
    cfg.reweight.validate()
    cfg.forecast.validate()
    if cfg.forecast.every and cfg.stages:
        raise ConfigError("forecast.every works on single-stage runs; drop `stages` or set forecast.every=0")
    validate_stages(cfg)
    if cfg.model.vocab_size is not None:
        positive("model.vocab_size", cfg.model.vocab_size)
    from parallel.rope_scaling import check_rope_scaling

    check_rope_scaling(cfg.model.rope_scaling)
    validate_attention(cfg)
    from pretrain.architecture import resolve_model  # validates the architecture against the data settings

    arch = resolve_model(cfg.model, cfg.parallel)
    cfg.lisa.validate(arch.num_layers, cfg.parallel.pipeline)
    validate_recompute(cfg.train, arch.num_layers // cfg.parallel.pipeline)
    if cfg.train.micro_batch_tokens and cfg.train.micro_batch_tokens < arch.seq_length:
        raise ConfigError(f"train.micro_batch_tokens={cfg.train.micro_batch_tokens} is smaller than one sequence "
                          f"(model.seq_length={arch.seq_length}); 0 packs one sequence's worth")
    if cfg.train.micro_batch_tokens and cfg.sp.mode != "off":
        raise ConfigError(f"train.micro_batch_tokens applies to sp.mode=off; with sp.mode={cfg.sp.mode} a rank's "
                          "micro-batch capacity is sp.tokens_per_rank")
    validate_sequence_parallel(cfg, arch)


def validate_attention(cfg: Config) -> None:
    if cfg.model.spec not in ("auto", "local", "te"):
        raise ConfigError(f"model.spec={cfg.model.spec!r} is not one of auto, local, te")
    if cfg.model.attention not in ("auto", "document", "te"):
        raise ConfigError(f"model.attention={cfg.model.attention!r} is not one of auto, document, te")
    if cfg.model.attention == "te":
        if cfg.model.spec == "local":
            raise ConfigError("model.attention=te needs Transformer Engine layers: set model.spec=te (or auto)")
        if cfg.sp.mode != "off":
            raise ConfigError(f"model.attention=te runs without hetron's sequence parallelism; with sp.mode={cfg.sp.mode} "
                              "use model.attention=document (or auto)")
        if cfg.model.rope_scaling:
            raise ConfigError("model.attention=te takes megatron's RoPE, which has no Hugging Face rope_scaling; "
                              "use model.attention=document (or auto)")
        if importlib.util.find_spec("transformer_engine") is None:
            raise ConfigError("model.attention=te needs Transformer Engine, which is not installed here; "
                              "use model.attention=document (or auto)")


def validate_recompute(train: TrainConfig, layers_per_stage: int) -> None:
    granularity, method, n = train.recompute_granularity, train.recompute_method, train.recompute_num_layers
    if granularity not in ("none", "full", "selective"):
        raise ConfigError(f"train.recompute_granularity={granularity!r} is not one of none, full, selective")
    if method not in ("uniform", "block"):
        raise ConfigError(f"train.recompute_method={method!r} is not one of uniform, block")
    if not 0 <= n <= layers_per_stage:
        raise ConfigError(f"train.recompute_num_layers={n} must lie in 0..{layers_per_stage} (the layers of a "
                          "pipeline stage; 0: all of them with block, one per chunk with uniform)")
    if granularity != "full" and n:
        raise ConfigError(f"train.recompute_num_layers={n} needs train.recompute_granularity=full "
                          "(selective recomputes the core attention of every layer)")


def validate_sequence_parallel(cfg: Config, arch) -> None:
    sp = cfg.sp
    if sp.mode not in ("off", "static", "adaptive"):
        raise ConfigError(f"sp.mode={sp.mode!r} is not one of off, static, adaptive")
    if sp.mode == "off":
        return
    if cfg.parallel.pipeline > 1:
        raise ConfigError(f"sp.mode={sp.mode} needs parallel.pipeline=1 (micro-batch shapes vary by group)")
    if sp.degree < 1 or sp.degree & (sp.degree - 1):
        raise ConfigError(f"sp.degree={sp.degree} must be a power of two")
    if sp.tokens_per_rank < 0:
        raise ConfigError(f"sp.tokens_per_rank={sp.tokens_per_rank} must be >= 0 (0: model.seq_length)")
    if sp.solver not in ("highs", "cbc", "none"):
        raise ConfigError(f"sp.solver={sp.solver!r} is not one of highs, cbc, none")
    if not sp.time_budget_s >= 0:
        raise ConfigError(f"sp.time_budget_s={sp.time_budget_s} must be >= 0 (0: from the step time)")
    if not 0 < sp.budget_fraction <= 1:
        raise ConfigError(f"sp.budget_fraction={sp.budget_fraction} must be in (0, 1]: planning runs in the "
                          "previous step's shadow")
    if not 0 < sp.budget_min_s <= sp.budget_max_s:
        raise ConfigError(f"sp.budget_min_s={sp.budget_min_s} and sp.budget_max_s={sp.budget_max_s} must satisfy "
                          "0 < budget_min_s <= budget_max_s")
    if not sp.cost_model.endswith(".json") and sp.cost_model.lower() not in ("auto", "7b", "13b", "30b"):
        raise ConfigError(f"sp.cost_model={sp.cost_model!r} is not auto, a preset (7b, 13b, 30b) or a .json file")
    from parallel.cost_model import preset_architecture

    measured_for = preset_architecture(sp.cost_model)
    if measured_for is not None and measured_for != (arch.num_layers, arch.hidden_size):
        raise ConfigError(f"sp.cost_model={sp.cost_model} holds FlexSP's constants for {measured_for[0]} layers x hidden "
                          f"{measured_for[1]}, not this model's {arch.num_layers} x {arch.hidden_size}; measure this "
                          "model with `hetron calibrate` (then sp.cost_model=FILE.json) or use sp.cost_model=auto "
                          "(scaled, uncalibrated)")
    if sp.cost_model.endswith(".json") and not Path(sp.cost_model).is_file():
        raise ConfigError(f"sp.cost_model={sp.cost_model}: no such file (write one with `hetron calibrate`)")


def resolved_dict(cfg: Config) -> dict[str, Any]:
    """The config as a tree with the preset's architecture written out (each model.* field left at None
    holds the value the run uses): what `hetron train --print-config` prints and run.dir/config.yaml holds.
    Loading it again gives the same run."""
    from pretrain.architecture import resolve_model

    tree = cfg.to_dict()
    tree["model"].update(dataclasses.asdict(resolve_model(cfg.model, cfg.parallel)))
    return tree


def config_yaml(cfg: Config) -> str:
    return yaml.safe_dump(resolved_dict(cfg), sort_keys=False)


def dump_config(cfg: Config, path: Path) -> None:
    path.write_text(config_yaml(cfg))
