#!/usr/bin/env bash
# The GPU machine's side of a measuring session: install FLA's wheels if missing, then run each STAGE named,
# writing everything under $OUT (default: benchmarks/results/latest). BENCH_MODELS picks the models. Each stage has its own time limit, so
# one stuck stage cannot eat the others' time.
#
#   OUT=/tmp/out benchmarks/device_session.sh env tests bench-char profile-char
#
# Stages: env, tests (pytest -m gpu), tests-ssd, scans (benchmarks/scan_bench.py), gpu-parity (issue 2's script, if present),
# gpu-parity-components (its model checks with one FLA component switched off at a time), bench-char,
# bench-char-graph (quick autotune, graph mode only),
# bench-char-modes (graph and compile), bench-char-fused (GROUNDTHINK_FUSED_RECURRENT_MAX_LEN=64), bench-compile,
# bench-long, bench-125m, profile-char, profile-125m, profile-long, profile-sites, ttr (time to result: the README's
# main command and the char run, cold then warm), ttr-sweep (the fusion sweep from empty caches).
# GROUNDTHINK_FLA_AUTOTUNE=quick (2 configs per FLA kernel instead of up to 48) is the default now; the `quick`
# wrapper below is kept so the stages say what they ran with. DATA: the folder with tinyshakespeare.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/latest}
DATA=${DATA:-../shared/data}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! python3 -c "import fla" 2>/dev/null; then
  python3 -m pip install -q --no-deps wheels/*.whl 2>/dev/null \
    || { python3 -m pip install -q --no-deps --target /tmp/site wheels/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site; }
fi
bench() { timeout -k 5 "$1" python3 -m groundthink bench --models "${BENCH_MODELS:-GF-MH,RWKV6,MAMBA2,GPT2}" "${@:2}"; }
quick() { ( export GROUNDTHINK_FLA_AUTOTUNE=quick; "$@" ); }

for stage in "$@"; do
  echo "=== $stage $(date -u +%T)"
  case $stage in
    env)
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
      python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'triton', triton.__version__, 'fla', fla.__version__, 'transformers', transformers.__version__, \
torch.cuda.get_device_name())" ;;
    tests)  # the whole GPU suite: ~300 s for the first 32 of its tests on a fresh H100 (session 9)
      GROUNDTHINK_PARITY_LOG=$OUT/parity.jsonl quick timeout -k 5 480 python3 -m pytest -q -m gpu -rfE tests/ \
        2>&1 | tee "$OUT/gpu_tests.txt" | tail -25 ;;
    tests-ssd)  # only the SSD scan checks (fused recurrent and chunked), e.g. after a dispatch change
      GROUNDTHINK_PARITY_LOG=$OUT/parity.jsonl quick timeout -k 5 120 python3 -m pytest -q -m gpu -rfE \
        tests/test_gpu_fast_paths.py -k ssd_scan 2>&1 | tee "$OUT/gpu_tests.txt" | tail -5 ;;
    scans) quick timeout -k 5 420 python3 benchmarks/scan_bench.py --shapes char,long,125m --json "$OUT/scan_bench.json" ;;
    gpu-parity)
      if [ -f benchmarks/gpu_parity.py ]; then
        quick timeout -k 5 240 python3 benchmarks/gpu_parity.py --out "$OUT/gpu_parity.json"
      else echo "benchmarks/gpu_parity.py not in the tree"; fi ;;
    gpu-parity-components)  # the model checks with FLA's small-op kernels off, then with the fused recurrent scans
      for setting in GROUNDTHINK_FUSED_OPS=0 GROUNDTHINK_FUSED_RECURRENT_MAX_LEN=64; do
        env "$setting" GROUNDTHINK_FLA_AUTOTUNE=quick timeout -k 5 150 python3 benchmarks/gpu_parity.py --groups model \
          --out "$OUT/gpu_parity_model_${setting%%=*}.json" | tail -4
      done ;;
    bench-char) bench 170 --shapes char --mode eager,graph --json "$OUT/bench_char.json" ;;
    bench-char-graph) quick bench 150 --shapes char --mode graph --json "$OUT/bench_char_graph.json" ;;
    bench-char-modes) bench 200 --shapes char --mode graph,compile --json "$OUT/bench_char_modes.json" ;;
    bench-char-fused)  # scans of <= 64 tokens on FLA's fused recurrent kernels (the default before this stage's run)
      GROUNDTHINK_FUSED_RECURRENT_MAX_LEN=64 quick bench 200 --shapes char --models GF-MH,RWKV6,MAMBA2 --mode graph \
        --json "$OUT/bench_char_fused.json" ;;
    bench-compile) quick bench 240 --shapes char --models GF-MH,GPT2 --mode compile --json "$OUT/bench_compile.json" ;;
    bench-long) quick bench 110 --shapes long --mode graph --json "$OUT/bench_long.json" ;;
    bench-125m) quick bench 130 --shapes 125m --mode graph --steps 10 --json "$OUT/bench_125m.json" ;;
    profile-char)  # quick autotuning: fully tuned, GF-MH's kernels outlast any short limit (session 10)
      quick timeout -k 5 90 python3 benchmarks/profile_step.py --model GF-MH --shape char --mode graph --out "$OUT/profile.txt"
      quick timeout -k 5 60 python3 benchmarks/profile_step.py --model GF-MH --shape char --mode eager --out "$OUT/profile.txt"
      quick timeout -k 5 30 python3 benchmarks/profile_step.py --model GPT2 --shape char --mode graph --out "$OUT/profile.txt" ;;
    profile-long) quick timeout -k 5 150 python3 benchmarks/profile_step.py --model GF-MH --shape long --mode graph --out "$OUT/profile.txt" ;;
    profile-sites)  # eager step: GPU time per (model function, op), backward charged to its forward function
      quick timeout -k 5 150 python3 benchmarks/profile_step.py --model GF-MH --shape 125m --mode eager --steps 2 \
        --by-site 40 --out "$OUT/profile_sites.txt" ;;
    profile-125m) quick timeout -k 5 150 python3 benchmarks/profile_step.py --model GF-MH --shape 125m --mode graph --steps 3 --out "$OUT/profile.txt" ;;
    ttr) timeout -k 5 420 python3 benchmarks/time_to_result.py --cases readme-main,char-1000 --data "$DATA" \
           --work /tmp/ttr --json "$OUT/time_to_result_single.json" ;;
    ttr-sweep) timeout -k 5 560 python3 benchmarks/time_to_result.py --cases fusion-sweep --cache cold --data "$DATA" \
           --work /tmp/ttr --json "$OUT/time_to_result_sweep.json" ;;
    *) echo "unknown stage $stage" ;;
  esac
done
echo "=== done $(date -u +%T)"
