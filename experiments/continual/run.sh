#!/usr/bin/env bash
# The continual-pretraining experiment: stage 1 once, then (a)-(d) start from its checkpoint
# (init_from, optimizer kept) with an equal stage-2 token budget, and (e) from scratch on the union.
# usage: experiments/continual/run.sh OUT_DIR C_SHARDS   (C_SHARDS: `hetron prepare --corpus <C sources>
#        --tokenizer <stage-1 shards>/tokenizer.json`, or a C corpus folder: it is prepared the same way)
set -euo pipefail
out=${1:?OUT_DIR}; c=${2:?C_SHARDS}
here=$(cd "$(dirname "$0")" && pwd)
hetron=${HETRON:-hetron}
common=("$here/common.yaml")
stage2_tokens=327680  # 40 steps of 8192 tokens
train() { local name=$1; shift; echo "== $name $(date -u +%H:%M:%S)"; "$hetron" train "${common[@]}" run.dir="$out/$name" --no-progress "$@"; }
stage1='[{name: python, steps: 80}]'
stage2() {  # a stage-2 list: schedule as YAML flow
  echo "[{name: c, data: [{path: $c}], tokens: $stage2_tokens, schedule: $1}]"
}
rewarm='{kind: rewarm, peak_lr: 3.0e-3, min_lr: 3.0e-4, warmup_init_lr: 3.0e-4, warmup_steps: 4}'
from1=(init_from="$out/stage1" init_optimizer=keep)
train stage1 "stages=$stage1"
train b_rewarm "${from1[@]}" "stages=$(stage2 "$rewarm")"
train d_rewarm_replay25 "${from1[@]}" "stages=$(stage2 "$rewarm")" replay.fraction=0.25
train e_union "stages=[{name: union, data: [{path: '', name: python, proportion: 2}, {path: $c, name: c, proportion: 1}], steps: 120}]"
train c_rewarm_replay5 "${from1[@]}" "stages=$(stage2 "$rewarm")" replay.fraction=0.05
train a_constant "${from1[@]}" "stages=$(stage2 '{kind: constant, peak_lr: 3.0e-4, warmup_steps: 0}')"
echo "== done $(date -u +%H:%M:%S)"
