"""LR schedules: reference values at chosen (and edge) steps, validation messages, lr/lrs agreement,
stages, and `hetron schedule plot`."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pretrain.errors import ConfigError
from pretrain.schedules import ScheduleSpec, parse_spec_text, stage_lr, staged_lrs

HETRON = Path(sys.executable).with_name("hetron")
PEAK, MIN = 3e-4, 3e-5


def cosine_ref(s, W=100, T=1000):
    if s < W:
        return PEAK * s / W
    return MIN + 0.5 * (PEAK - MIN) * (1 + math.cos(math.pi * min(s - W, T - W) / (T - W)))


@pytest.mark.parametrize("step", [0, 1, 50, 99, 100, 101, 550, 999, 1000, 5000])
def test_cosine_matches_formula(step):
    spec = ScheduleSpec(kind="cosine", peak_lr=PEAK, min_lr=MIN, warmup_steps=100, total_steps=1000)
    assert spec.lr(step) == pytest.approx(cosine_ref(step), rel=1e-12, abs=1e-15)


def test_cosine_reproduces_the_mpl_25m_logged_lr():
    # cosine_24000.csv of the multi-power-law release logs lr 0.0002999771173709568 at step 2288
    spec = ScheduleSpec(kind="cosine", peak_lr=PEAK, min_lr=MIN, warmup_steps=2160, total_steps=24000)
    assert spec.lr(2288) == pytest.approx(0.0002999771173709568, rel=1e-12)


def test_constant():
    spec = ScheduleSpec(kind="constant", peak_lr=PEAK, warmup_steps=10, total_steps=100)
    assert [spec.lr(s) for s in (0, 5, 10, 99, 500)] == pytest.approx([0, PEAK / 2, PEAK, PEAK, PEAK])


@pytest.mark.parametrize("shape,mid", [
    ("linear", PEAK + (MIN - PEAK) * 0.25),
    ("cosine", MIN + 0.5 * (PEAK - MIN) * (1 + math.cos(math.pi * 0.25))),
    ("1-sqrt", MIN + (PEAK - MIN) * (1 - math.sqrt(0.25))),
    ("exponential", PEAK * (MIN / PEAK) ** 0.25),
    ("megatron-exponential", MIN + (PEAK - MIN) * (2 * 0.5 ** 0.25 - 1)),
])
def test_wsd_cooldown_shapes(shape, mid):
    spec = ScheduleSpec(kind="wsd", peak_lr=PEAK, min_lr=MIN, warmup_steps=100, total_steps=1000,
                        cooldown_steps=200, decay_shape=shape)
    assert spec.lr(99) == pytest.approx(PEAK * 0.99)
    assert spec.lr(100) == pytest.approx(PEAK)
    assert spec.lr(800) == pytest.approx(PEAK)          # first cooldown step: still peak
    assert spec.lr(850) == pytest.approx(mid, rel=1e-12)  # a quarter into the cooldown
    assert spec.lr(1000) == pytest.approx(MIN)
    assert spec.lr(2000) == pytest.approx(MIN)


def test_wsd_exponential_matches_the_mpl_25m_formula():
    spec = ScheduleSpec(kind="wsd", peak_lr=PEAK, min_lr=MIN, warmup_steps=2160, total_steps=24000,
                        cooldown_steps=4000, decay_shape="exponential")
    D, T = 20000, 24000
    for s in (20000, 21234, 23999):
        ref = PEAK ** ((T - s) / (T - D)) * MIN ** ((s - D) / (T - D))
        assert spec.lr(s) == pytest.approx(ref, rel=1e-12)


def test_the_two_exponentials_are_different_curves():
    geometric, megatron = (ScheduleSpec(kind="wsd", peak_lr=PEAK, min_lr=MIN, warmup_steps=0, total_steps=1000,
                                        cooldown_steps=200, decay_shape=shape) for shape in
                           ("exponential", "megatron-exponential"))
    assert geometric.lr(900) == pytest.approx(PEAK * (MIN / PEAK) ** 0.5, rel=1e-12)
    assert megatron.lr(900) == pytest.approx(MIN + (PEAK - MIN) * (2 * 0.5 ** 0.5 - 1), rel=1e-12)
    assert megatron.lr(900) / geometric.lr(900) > 1.4          # ~33% apart mid-cooldown at min = peak / 10
    for s in (800, 1000):
        assert megatron.lr(s) == pytest.approx(geometric.lr(s), rel=1e-12)
    # megatron's needs no positive floor
    ScheduleSpec(kind="wsd", min_lr=0.0, cooldown_steps=10, decay_shape="megatron-exponential").validate()


def _megatron_scheduler(args: dict):
    import torch
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args["max_lr"])
    return OptimizerParamScheduler(optimizer, start_wd=0.1, end_wd=0.1, wd_incr_steps=args["lr_decay_steps"],
                                   wd_incr_style="constant", **args), optimizer


SHARED_WITH_MEGATRON = [
    dict(kind="constant", warmup_steps=10, total_steps=100),
    dict(kind="constant", warmup_steps=0, total_steps=100),
    dict(kind="cosine", warmup_steps=10, total_steps=100),
    dict(kind="cosine", warmup_steps=0, total_steps=97, decay_shape="linear"),
    dict(kind="rewarm", warmup_init_lr=MIN, warmup_steps=7, total_steps=100),
    dict(kind="rewarm", warmup_init_lr=1e-4, warmup_steps=7, total_steps=100, decay_shape="linear"),
    *[dict(kind="wsd", warmup_steps=10, total_steps=100, cooldown_steps=30, decay_shape=shape)
      for shape in ("linear", "cosine", "1-sqrt", "megatron-exponential")],
    dict(kind="wsd", warmup_steps=0, total_steps=100, cooldown_steps=100, decay_shape="1-sqrt"),
    dict(kind="wsd", warmup_init_lr=MIN, warmup_steps=5, total_steps=64, cooldown_steps=13,
         decay_shape="megatron-exponential", min_lr=0.0),
]


@pytest.mark.parametrize("values", SHARED_WITH_MEGATRON,
                         ids=lambda v: "-".join(str(v.get(k, "")) for k in ("kind", "decay_shape", "warmup_steps")))
def test_every_shared_schedule_equals_megatron_cores_scheduler_step_by_step(values):
    """LR of the first optimizer step = the scheduler's after construction (step(0)); megatron's
    training loop then calls step(1) after every optimizer step. Past the end both keep min_lr."""
    from pretrain.schedules.megatron import megatron_scheduler_args

    spec = ScheduleSpec(**{"peak_lr": PEAK, "min_lr": MIN, **values}).validate()
    args = megatron_scheduler_args(spec)
    assert args is not None
    scheduler, optimizer = _megatron_scheduler(args)
    ours = spec.lrs(spec.total_steps + 10)
    theirs = []
    for _ in range(len(ours)):
        theirs.append(optimizer.param_groups[0]["lr"])
        scheduler.step(1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-18)


@pytest.mark.parametrize("values", [
    dict(kind="wsd", cooldown_steps=30, decay_shape="exponential"),   # geometric: megatron has no such curve
    dict(kind="cosine", decay_shape="1-sqrt"),                        # megatron has 1-sqrt only inside WSD
    dict(kind="infinite", constant_lr=1e-4, cooldown_steps=10),
    dict(kind="piecewise", points=[[0, PEAK], [50, MIN]]),
])
def test_schedules_megatron_cannot_express_have_no_equivalent(values):
    from pretrain.schedules.megatron import megatron_scheduler_args

    spec = ScheduleSpec(**{"peak_lr": PEAK, "min_lr": MIN, "warmup_steps": 10, "total_steps": 100, **values}).validate()
    assert megatron_scheduler_args(spec) is None


def test_infinite_phases():
    spec = ScheduleSpec(kind="infinite", peak_lr=PEAK, min_lr=MIN, constant_lr=1e-4, warmup_steps=100,
                        cooldown_steps=400, anneal_steps=100, total_steps=2000, timescale=2.0)
    g = lambda x: 1 / math.sqrt(1 + 2.0 * x) - 1  # noqa: E731
    assert spec.lr(50) == pytest.approx(PEAK / 2)
    assert spec.lr(100) == pytest.approx(PEAK)
    assert spec.lr(300) == pytest.approx(PEAK + (1e-4 - PEAK) * g(0.5) / g(1.0))
    assert spec.lr(500) == pytest.approx(1e-4)
    assert spec.lr(1899) == pytest.approx(1e-4)
    assert spec.lr(1950) == pytest.approx(1e-4 * (MIN / 1e-4) ** 0.5)
    assert spec.lr(2000) == pytest.approx(MIN)
    cos = ScheduleSpec(kind="infinite", peak_lr=PEAK, constant_lr=1e-4, warmup_steps=0, cooldown_steps=100,
                       total_steps=1000, decay_shape="cosine")
    assert cos.lr(50) == pytest.approx(1e-4 + (PEAK - 1e-4) / 2)
    assert cos.lr(999) == pytest.approx(1e-4)  # no anneal: constant to the end


def test_rewarm_stage_restarts_from_the_previous_final_lr():
    stage1 = ScheduleSpec(kind="cosine", peak_lr=PEAK, min_lr=MIN, warmup_steps=10, total_steps=1000)
    stage2 = ScheduleSpec(kind="rewarm", peak_lr=PEAK, min_lr=MIN, warmup_init_lr=MIN, warmup_steps=10,
                          total_steps=500)
    lrs = staged_lrs([stage1, stage2])
    assert len(lrs) == 1500
    assert lrs[1000] == pytest.approx(MIN)             # stage 2 step 0: continues from stage 1's end
    assert lrs[1005] == pytest.approx((MIN + PEAK) / 2)
    assert lrs[1010] == pytest.approx(PEAK)
    assert lrs[1499] == pytest.approx(stage2.lr(499))
    assert stage_lr([stage1, stage2], 1250) == pytest.approx(stage2.lr(250))
    assert stage_lr([stage1, stage2], 400) == pytest.approx(stage1.lr(400))


def test_piecewise_drop_like_wsdcon():
    spec = ScheduleSpec(kind="piecewise", peak_lr=PEAK, warmup_steps=100, total_steps=1000,
                        points=[[100, PEAK], [500, 9e-5]], interpolate="previous")
    assert spec.lr(499) == pytest.approx(PEAK)
    assert spec.lr(500) == pytest.approx(9e-5)
    linear = ScheduleSpec(kind="piecewise", peak_lr=PEAK, warmup_steps=0, total_steps=1000,
                          points=[[0, PEAK], [1000, 0.0]])
    assert linear.lr(250) == pytest.approx(0.75 * PEAK)


@pytest.mark.parametrize("values,message", [
    (dict(kind="wsd", cooldown_steps=5000, total_steps=4000),
     "schedule.cooldown_steps=5000 is longer than the run (schedule.total_steps=4000)"),
    (dict(kind="cosine", peak_lr=1e-4, min_lr=1e-3), "schedule.min_lr=0.001 is above schedule.peak_lr=0.0001"),
    (dict(kind="wsd", warmup_steps=3000, cooldown_steps=2000, total_steps=4000), "exceed the run"),
    (dict(kind="cosine", warmup_steps=5000, total_steps=4000), "schedule.warmup_steps=5000 is longer than the run"),
    (dict(kind="triangle"), "schedule.kind='triangle' is not one of"),
    (dict(kind="wsd", cooldown_steps=10, decay_shape="quadratic"), "schedule.decay_shape='quadratic'"),
    (dict(kind="wsd", cooldown_steps=10, decay_shape="exponential", min_lr=0.0), "must be positive for decay_shape"),
    (dict(kind="infinite"), "schedule.constant_lr is required"),
    (dict(kind="infinite", constant_lr=1.0), "schedule.constant_lr=1.0 must lie between"),
    (dict(kind="wsd", cooldown_steps=100, stable_steps=5, total_steps=1000), "schedule.stable_steps=5 disagrees"),
    (dict(kind="piecewise"), "schedule.points is required"),
    (dict(kind="cosine", peak_lr=0.0), "schedule.peak_lr=0.0 must be positive"),
    (dict(kind="cosine", total_steps=-5), "schedule.total_steps=-5 must be a non-negative integer"),
])
def test_inconsistent_parameters_are_rejected_naming_the_key(values, message):
    with pytest.raises(ConfigError) as err:
        ScheduleSpec(**values).validate()
    assert message in str(err.value)


def test_prefix_names_the_full_dotted_key_and_unknown_keys_are_rejected():
    with pytest.raises(ConfigError, match=r"stages\.1\.schedule\.cooldown_steps=5000"):
        ScheduleSpec(kind="wsd", cooldown_steps=5000, total_steps=4000).validate(prefix="stages.1.schedule")
    with pytest.raises(ConfigError, match=r"schedule\.cooldown is not a schedule key"):
        ScheduleSpec.from_dict({"kind": "wsd", "cooldown": 5})


def test_from_dict_accepts_yaml_style_numbers(tmp_path):
    spec = parse_spec_text("kind=wsd,peak_lr=1e-3,min_lr=1e-5,warmup_steps=1e2,total_steps=2e3,cooldown_steps=400")
    assert spec.total_steps == 2000 and spec.peak_lr == 1e-3
    path = tmp_path / "run.yaml"
    path.write_text("schedule:\n  kind: cosine\n  peak_lr: 6e-4\n  total_steps: 50\n")
    assert parse_spec_text(str(path)).peak_lr == 6e-4


SPECS = st.one_of(
    st.builds(lambda w, t, c: ScheduleSpec(kind="wsd", warmup_steps=w, total_steps=w + c + t, cooldown_steps=c,
                                           decay_shape="1-sqrt"),
              st.integers(0, 50), st.integers(1, 300), st.integers(0, 100)),
    st.builds(lambda w, t: ScheduleSpec(kind="cosine", warmup_steps=w, total_steps=w + t),
              st.integers(0, 50), st.integers(1, 300)),
    st.builds(lambda w, c, a, t: ScheduleSpec(kind="infinite", constant_lr=1e-4, warmup_steps=w, cooldown_steps=c,
                                              anneal_steps=a, total_steps=w + c + a + t),
              st.integers(0, 50), st.integers(0, 50), st.integers(0, 50), st.integers(1, 100)),
)


@settings(max_examples=60, deadline=None)
@given(SPECS)
def test_lrs_agrees_with_lr_and_stays_in_range(spec):
    spec.validate()
    lrs = spec.lrs(spec.total_steps + 20)
    assert len(lrs) == spec.total_steps + 20
    for s in {0, spec.warmup_steps, spec.total_steps - 1, spec.total_steps, spec.total_steps // 2}:
        assert lrs[s] == spec.lr(s)
    assert np.all(lrs >= 0) and np.all(lrs <= spec.peak_lr * (1 + 1e-12))
    after = lrs[spec.warmup_steps:]
    assert np.all(np.diff(after) <= 1e-18)  # these kinds never rise after the warmup


def test_schedule_plot_cli(tmp_path):
    out = tmp_path / "s.png"
    proc = subprocess.run([str(HETRON), "schedule", "plot",
                           "kind=wsd,warmup_steps=10,total_steps=100,cooldown_steps=20,decay_shape=linear",
                           "--at", "0,5,10,90,99", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "step         5  lr 0.00015" in proc.stdout
    assert "step        90  lr 0.000165" in proc.stdout
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"


def test_schedule_cli_bad_spec_is_one_line_and_exit_2():
    proc = subprocess.run([str(HETRON), "schedule", "plot", "kind=wsd,cooldown_steps=5000,total_steps=4000"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "hetron schedule: error: schedule.cooldown_steps=5000 is longer than the run (schedule.total_steps=4000)"]
