#!/usr/bin/env bash
# One short GPU window (about 8 minutes): eager versus the dti.accel settings for the SDXL training
# step, SDXL sampling, and SANA 1.5 1.6B / 4.8B training and sampling, at their real shapes with
# random weights in bf16 (benchmarks/step_time.py, benchmarks/sampling.py).
#
#   OUT=results_folder benchmarks/gpu_check.sh     # on one CUDA GPU; BUDGET=seconds (default 450)
#   benchmarks/gpu_check.sh --dry-run              # the same steps on the tiny CPU models (no compile
#                                                  # steps unless DRY_COMPILE=1: minutes each on a CPU)
#
# Each step runs under its own time limit, cut to what is left of BUDGET, so a failure or a hang
# loses that step alone; the benchmarks write their JSON after every variant, so a step cut short
# keeps what it measured. Order: every eager and non-compiling variant first (cheap), then the
# compiled ones (each compiles for a minute or more), SDXL before SANA. Everything lands in $OUT:
# one JSON and log per step, steps.log (exit status and seconds of each), and from
# benchmarks/gpu_summary.py summary.csv, summary.md (every variant, the goals, the cost tables) and
# measured_times_{eager,best}.json for benchmarks/cost_table.py.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
BUDGET=${BUDGET:-450}
RESERVE=15  # seconds kept for the summary
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# compiled code cached outside $OUT (it is large, and not a result)
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-${TMPDIR:-/tmp}/dti_inductor_cache}
START=$(date +%s)
: > "$OUT/steps.log"

step() {  # step NAME LIMIT COMMAND...: run COMMAND for at most LIMIT seconds, less if the budget is short
    local name=$1 limit=$2 left t0 rc
    shift 2
    left=$(( BUDGET - RESERVE - ($(date +%s) - START) ))
    if [ "$left" -lt 30 ]; then
        echo "$name skipped: budget spent" | tee -a "$OUT/steps.log"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit} s): $*"
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc $(( $(date +%s) - t0 )) s$( [ $rc = 124 ] && echo ' (time limit)')" | tee -a "$OUT/steps.log"
    tail -n 25 "$OUT/$name.log"
}

if [ $DRY = 1 ]; then
    SHAPES=tiny; SDXL=sdxl; SANA=sana; SANA_SMALL=sana; SANA_BIG=sana
    TRAIN=(--steps 2 --warmup 1); SAMPLE=(--steps 2 --warmup-steps 1)
    ATTN=flash  # cudnn is a CUDA kernel
else
    SHAPES=real; SDXL=sdxl; SANA=sana-1.6b,sana-4.8b; SANA_SMALL=sana-1.6b; SANA_BIG=sana-4.8b
    TRAIN=(--steps 6 --warmup 1); SAMPLE=()  # sampling: the protocol's steps (SDXL 50, SANA 20), batch 4
    ATTN=cudnn  # torch's own order puts cuDNN attention last; flash is its first choice already
fi
ST=("$PY" benchmarks/step_time.py --shapes $SHAPES --measure dti,floor "${TRAIN[@]}"
    --reference "$OUT/train_reference_{config}.safetensors")
SA=("$PY" benchmarks/sampling.py --shapes $SHAPES "${SAMPLE[@]}"
    --reference "$OUT/sample_reference_{config}.safetensors")
# The variants. SANA: diffusers' SANA attention does not use fused projections (dti.accel refuses it).
UNET_FAST=channels_last=true,fuse_qkv=true
SANA_FAST=channels_last=true
TRAIN_COMPILE=compile=default,compile_text_encoders=true

"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" > "$OUT/machine.txt" 2>&1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

# 1. eager and the settings that need no compilation
step sdxl-train-a 100 "${ST[@]}" --families $SDXL --accel eager --accel $UNET_FAST \
    --accel $UNET_FAST,attention=$ATTN --out "$OUT/sdxl-train-a.json"
step sdxl-sample-a 110 "${SA[@]}" --families $SDXL --accel eager --accel $UNET_FAST \
    --accel $UNET_FAST,attention=$ATTN --out "$OUT/sdxl-sample-a.json"
step sana-train-a 100 "${ST[@]}" --families $SANA --accel eager --accel $SANA_FAST,attention=$ATTN \
    --out "$OUT/sana-train-a.json"
step sana-sample-a 110 "${SA[@]}" --families $SANA --accel eager --accel $SANA_FAST,attention=$ATTN \
    --out "$OUT/sana-sample-a.json"
# 2. torch.compile (compared against the eager references written in 1); training also compiles the
#    text encoders: they are a quarter (SDXL) to a half (SANA 1.6B) of a step
if [ $DRY = 0 ] || [ "${DRY_COMPILE:-0}" = 1 ]; then
    step sdxl-train-b 170 "${ST[@]}" --families $SDXL --accel $TRAIN_COMPILE,$UNET_FAST --out "$OUT/sdxl-train-b.json"
    step sdxl-sample-b 150 "${SA[@]}" --families $SDXL --accel compile=default,$UNET_FAST \
        --out "$OUT/sdxl-sample-b.json"
    step sana-train-b 150 "${ST[@]}" --families $SANA_SMALL --accel $TRAIN_COMPILE,$SANA_FAST \
        --out "$OUT/sana-train-b.json"
    step sana-sample-b 150 "${SA[@]}" --families $SANA_SMALL --accel compile=default,$SANA_FAST \
        --out "$OUT/sana-sample-b.json"
    # 3. with time left: CUDA graphs for sampling, the memory-chosen batch, the 4.8B compiled
    if [ $DRY = 0 ]; then
        step sdxl-sample-c 150 "${SA[@]}" --families $SDXL --accel $UNET_FAST,sample_batch=auto --max-batch 16 \
            --accel compile=reduce-overhead,$UNET_FAST --out "$OUT/sdxl-sample-c.json"
    fi
    step sana-train-c 150 "${ST[@]}" --families $SANA_BIG --accel $TRAIN_COMPILE,$SANA_FAST \
        --out "$OUT/sana-train-c.json"
    step sana-sample-c 150 "${SA[@]}" --families $SANA_BIG --accel compile=default,$SANA_FAST \
        --out "$OUT/sana-sample-c.json"
else
    echo "compile steps skipped in --dry-run (DRY_COMPILE=1 runs them)" | tee -a "$OUT/steps.log"
fi

echo "== summary ($(( $(date +%s) - START )) s so far)"
"$PY" benchmarks/gpu_summary.py "$OUT" > "$OUT/summary.log" 2>&1 || echo "summary failed: see $OUT/summary.log"
cat "$OUT/steps.log"
head -n 60 "$OUT/summary.md" 2>/dev/null
echo "total $(( $(date +%s) - START )) s; results in $OUT"
