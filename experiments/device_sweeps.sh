#!/usr/bin/env bash
# The GPU machine's side of an experiments session: install FLA's wheels if missing, check the captured
# training step against the eager one, then run the sweeps named, in order, inside one time budget, and pack
# every sweep folder (without checkpoints) into $OUT/sweeps.tgz for `groundthink sweep ... --report`.
#
#   OUT=/tmp/out BUDGET=540 PARALLEL=4 experiments/device_sweeps.sh verify fusion extreme-ratios
#
# A stage is `verify` or a sweep name (configs/sweeps/NAME.yaml); `NAME:0,1` runs only those seeds. The
# data comes from .data/ (a copy or link of ../shared/data). If `verify` fails, the sweeps run with the
# eager step (train.cuda_graph=off) into their own folders (runs/sweeps-eager/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} GROUNDTHINK_FLA_AUTOTUNE=quick
if ! python3 -c "import fla" 2>/dev/null; then
  python3 -m pip install -q --no-deps wheels/*.whl 2>/dev/null \
    || { python3 -m pip install -q --no-deps --target /tmp/site wheels/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site; }
fi
END=$((SECONDS + ${BUDGET:-540}))
EXTRA=()
ROOT=runs/sweeps
for stage in "$@"; do
  left=$((END - SECONDS - 20))  # 20 s kept for packing
  echo "=== $stage $(date -u +%T), ${left} s left"
  [ "$left" -gt 30 ] || { echo "no time left for $stage"; break; }
  case $stage in
    verify)
      timeout -k 5 150 python3 -m pytest -q -m gpu -rfE tests/test_gpu_models.py -k trainer_cuda_graph \
        > "$OUT/verify.txt" 2>&1
      rc=$?; tail -5 "$OUT/verify.txt"
      if [ $rc -ne 0 ] || ! grep -q " passed" "$OUT/verify.txt"; then
        echo "the captured step was not verified (pytest rc $rc): sweeps run eagerly"
        EXTRA=(--set train.cuda_graph=off); ROOT=runs/sweeps-eager
      fi ;;
    *)
      name=${stage%%:*}; seeds=()
      [ "$name" != "$stage" ] && seeds=(--seeds "${stage#*:}")
      timeout -k 10 "$left" python3 -m groundthink sweep "configs/sweeps/$name.yaml" --data-root .data \
        --out "$ROOT/$name" --parallel "${PARALLEL:-4}" --time-budget "$((left - 10))" "${seeds[@]}" "${EXTRA[@]}" \
        2>&1 | tee -a "$OUT/sweeps.log" | grep -v "^\s*$" | tail -40 ;;
  esac
done
tar czf "$OUT/sweeps.tgz" --exclude=checkpoints --exclude='*.safetensors' runs/sweeps* 2>/dev/null
echo "=== done $(date -u +%T)"
