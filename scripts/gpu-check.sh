#!/usr/bin/env bash
# Every GPU check in one command of at most 8 minutes, on one GPU with no network:
#   scripts/gpu-check.sh [--dry-run] [--out DIR]
# 1. megatron-core & co. from the carried wheels in .whl/ (scripts/gpu-wheels.sh) when missing;
# 2. `pytest -m gpu` (tests/test_gpu.py); 3. benchmarks/gpu_bench.py; writes DIR/env.json,
# DIR/gpu-tests.txt, DIR/gpu-tests.xml, DIR/gpu_bench.json, DIR/gpu_bench.txt and DIR/report.txt.
# --dry-run: the same steps on the CPU at tiny sizes (make test runs it, so the script keeps working).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
OUT=gpu-check-out
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    *) echo "scripts/gpu-check.sh: unknown argument '$1' (use --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
if [ "$DRY" = 1 ]; then
  PY=${PYTHON:-.venv/bin/python}
  export HETRON_GPU_DRY=1
  BENCH_ARGS=--dry-run
else
  PY=${PYTHON:-python3}
  BENCH_ARGS=
fi
export PYTHONUNBUFFERED=1
START=$SECONDS
left() { echo $(( BUDGET_S - (SECONDS - START) )); }

if ! "$PY" -c "import megatron.core, streaming, submitit, pulp, highspy" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "scripts/gpu-check.sh: megatron-core, streaming, submitit, pulp or highspy is missing and .whl/ holds no wheels: run scripts/gpu-wheels.sh where the registries are and carry .whl" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --target .whl/site .whl/*.whl || { echo "scripts/gpu-check.sh: installing .whl/*.whl failed" >&2; exit 2; }
  export PYTHONPATH="$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - > "$OUT/env.json" <<'PYEOF'
import json, sys
sys.path.insert(0, "benchmarks")
from gpu_bench import environment
print(json.dumps(environment(), indent=2))
PYEOF

timeout $(( $(left) * 2 / 3 )) "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py \
  --junitxml "$OUT/gpu-tests.xml" > "$OUT/gpu-tests.txt" 2>&1
TESTS_RC=$?
timeout "$(left)" "$PY" benchmarks/gpu_bench.py $BENCH_ARGS --json "$OUT/gpu_bench.json" > "$OUT/gpu_bench.txt" 2>&1
BENCH_RC=$?

{
  echo "gpu-check $( [ "$DRY" = 1 ] && echo "(dry run, CPU)" ) in $(( SECONDS - START )) s"
  cat "$OUT/env.json"
  echo "tests (exit $TESTS_RC): $(tail -n 1 "$OUT/gpu-tests.txt")"
  echo "benchmark (exit $BENCH_RC):"
  grep -v -i -E "warn|^ *return |cpp_extension" "$OUT/gpu_bench.txt" | tail -n 20
} > "$OUT/report.txt"
cat "$OUT/report.txt"
[ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
