#!/usr/bin/env bash
# The GPU machine's side of a measuring session: install FLA's wheels if missing, then run each STAGE named,
# writing everything under $OUT (default: benchmarks/results/latest). Each stage has its own time limit, so
# one stuck stage cannot eat the others' time.
#
#   OUT=/tmp/out benchmarks/device_session.sh env tests bench-char profile-char
#
# Stages: env, tests (pytest -m gpu), gpu-parity (issue 2's script, if present), bench-char, bench-compile,
# bench-long, bench-125m, profile-char, profile-125m, profile-long.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/latest}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! python3 -c "import fla" 2>/dev/null; then
  python3 -m pip install -q --no-deps wheels/*.whl 2>/dev/null \
    || { python3 -m pip install -q --no-deps --target /tmp/site wheels/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site; }
fi
bench() { timeout -k 5 "$1" python3 -m groundthink bench "${@:2}"; }

for stage in "$@"; do
  echo "=== $stage $(date -u +%T)"
  case $stage in
    env)
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
      python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'triton', triton.__version__, 'fla', fla.__version__, 'transformers', transformers.__version__, \
torch.cuda.get_device_name())" ;;
    tests)
      GROUNDTHINK_PARITY_LOG=$OUT/parity.jsonl timeout -k 5 280 python3 -m pytest -q -m gpu -rfE tests/ \
        > "$OUT/gpu_tests.txt" 2>&1
      tail -25 "$OUT/gpu_tests.txt" ;;
    gpu-parity)
      if [ -f benchmarks/gpu_parity.py ]; then
        timeout -k 5 240 python3 benchmarks/gpu_parity.py --out "$OUT/gpu_parity.json"
      else echo "benchmarks/gpu_parity.py not in the tree"; fi ;;
    bench-char) bench 240 --shapes char --mode eager,graph --json "$OUT/bench_char.json" ;;
    bench-compile) bench 300 --shapes char --mode compile --json "$OUT/bench_compile.json" ;;
    bench-long) bench 200 --shapes long --mode graph --json "$OUT/bench_long.json" ;;
    bench-125m) bench 240 --shapes 125m --mode graph --steps 10 --json "$OUT/bench_125m.json" ;;
    profile-char)
      for mode in eager graph; do
        timeout -k 5 90 python3 benchmarks/profile_step.py --model GF-MH --shape char --mode "$mode" --out "$OUT/profile.txt"
      done
      timeout -k 5 60 python3 benchmarks/profile_step.py --model GPT2 --shape char --mode graph --out "$OUT/profile.txt" ;;
    profile-long) timeout -k 5 120 python3 benchmarks/profile_step.py --model GF-MH --shape long --mode graph --out "$OUT/profile.txt" ;;
    profile-125m) timeout -k 5 150 python3 benchmarks/profile_step.py --model GF-MH --shape 125m --mode graph --steps 3 --out "$OUT/profile.txt" ;;
    *) echo "unknown stage $stage" ;;
  esac
done
echo "=== done $(date -u +%T)"
