#!/usr/bin/env bash
# Data-parallel scaling of `groundthink train` at the ~125M shape of `groundthink bench` ("125m": GF-MH, hidden
# 768, 12 blocks, 16K BPE, seq 2048, batch 8 per GPU): tok/s on 1 GPU, then on NPROC GPUs with DDP and FSDP2.
# Weak scaling: every GPU keeps batch 8, so scaling = tok/s(N GPUs) / tok/s(1 GPU); the issue's target is >= 1.8x
# on 2 GPUs. tok/s is the median of the trainer's own train records after WARMUP steps (FLA autotuning, NCCL
# setup). Needs no network: the text is the Python standard library's source (its content does not affect speed).
#
#   OUT=/tmp/out benchmarks/ddp_scaling.sh          # on a machine with >= 2 GPUs; writes $OUT/ddp_scaling.json
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/ddp_scaling}
NPROC=${NPROC:-2} STEPS=${STEPS:-60} WARMUP=${WARMUP:-20}
RUNS=${RUNS:-/tmp/gt-ddp-runs}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} GROUNDTHINK_CACHE=${GROUNDTHINK_CACHE:-/tmp/gt-cache}
export GROUNDTHINK_FLA_AUTOTUNE=quick  # as benchmarks/device_session.sh: 2 candidates per FLA kernel, not up to 48
if ! python3 -c "import fla" 2>/dev/null; then
  python3 -m pip install -q --no-deps wheels/*.whl 2>/dev/null \
    || { python3 -m pip install -q --no-deps --target /tmp/site wheels/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site; }
fi
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpus.csv"

CORPUS=$RUNS/stdlib.txt  # ~8 MB of text for the 16K BPE (trained once, then cached)
python3 - "$CORPUS" <<'EOF'
import pathlib, sys, sysconfig
files = sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
text, size = [], 0
for f in files:
    if size > 8_000_000:
        break
    part = f.read_text(encoding="utf-8", errors="replace")
    text.append(part)
    size += len(part)
pathlib.Path(sys.argv[1]).write_text("".join(text), encoding="utf-8")
EOF

COMMON=(--model GF-MH --data "$CORPUS" --set data.tokenizer=bpe --set data.vocab_size=16384 --seq-len 2048
        --batch-size 8 --steps "$STEPS" --set model.hidden_size=768 --set model.n_layers=12 --set model.rwkv_heads=6
        --set model.mamba_head_dim=64 --set model.mamba_state_size=128 --set train.log_every=5
        --set train.eval_every=100000 --set train.eval_windows=16 --set train.progress=false
        --set train.tensorboard=false)
run() {  # NAME FLAGS...: one training run; its metrics and summary are copied to $OUT/NAME
  local name=$1; shift
  rm -rf "${RUNS:?}/$name"
  echo "=== $name $(date -u +%T)"
  timeout -k 10 540 python3 -m groundthink train "${COMMON[@]}" --out "$RUNS/$name" "$@" 2>&1 | tail -4
  mkdir -p "$OUT/$name" && cp "$RUNS/$name/metrics.jsonl" "$RUNS/$name/summary.json" "$OUT/$name/"
}
run 1gpu
run "${NPROC}gpu-ddp" --nproc "$NPROC"
run "${NPROC}gpu-fsdp" --nproc "$NPROC" --set train.parallel=fsdp

python3 - "$OUT" "$WARMUP" "$NPROC" <<'EOF' | tee "$OUT/ddp_scaling.json"
import json, pathlib, statistics, sys
out, warmup, nproc = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
result = {"shape": "125m: GF-MH hidden 768, 12 blocks, 16K BPE, seq 2048, batch 8 per GPU", "warmup_steps": warmup}
for name in ("1gpu", f"{nproc}gpu-ddp", f"{nproc}gpu-fsdp"):
    records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    tok_s = [r["tok_per_s"] for r in records if r["kind"] == "train" and r["step"] > warmup]
    result[name] = {"tok_per_s": statistics.median(tok_s), "records": len(tok_s),
                    "params": json.loads((out / name / "summary.json").read_text())["params"]}
for mode in ("ddp", "fsdp"):
    result[f"scaling_{mode}"] = result[f"{nproc}gpu-{mode}"]["tok_per_s"] / result["1gpu"]["tok_per_s"]
print(json.dumps(result, indent=1))
EOF
