#!/usr/bin/env bash
# The GPU check: everything minirate needs to learn about a GPU, in one run of under 10 minutes.
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh            # on the GPU machine (CuPy, torch)
#   GPU_CHECK_DEVICE=cpu OUT=/tmp/gc bash benchmarks/gpu_check.sh   # the same stages, tiny, on a CPU
#
# Stages, in order of value, each time-boxed (`timeout`) and logged to $OUT/<stage>.log; a stage
# that fails or times out is recorded in $OUT/SUMMARY.md and the script goes on (it exits 1 at
# the end when any stage failed). The whole run
# keeps inside GPU_CHECK_BUDGET seconds (default 480): a stage gets at most what is left, and one
# with under 20 s left is skipped. docs/GPU.md says what each stage measures and what to do with
# its output.
#   0 env          GPU, driver, CuPy / PyTorch versions, which Python packages import
#   1 tests        the test suite's CuPy half: pytest -k 'cupy and not strict' (every layer gradient
#                  check and method test on the GPU; skip reasons listed)
#   1b fused       benchmarks/fused_check.py: each fused kernel against the unfused CuPy ops on the
#                  same inputs (float64 <= 1e-12) and both timed
#   2 agreement    benchmarks/gpu_cpu_agreement.py --devices cpu,cuda: float64 gradients of every
#                  method (<= 1e-10) and a float32 loss curve on both
#   3 train        train.py --device cuda on the bundled sample (must learn), its checkpoint
#                  resumed on the CPU, and the CPU's resumed on the GPU again
#   3b nccl        benchmarks/nccl_check.py: one MPI rank all-reducing through a one-GPU NCCL
#                  communicator equals the run without MPI (float64, bitwise)
#   4 torch        benchmarks/compare_torch.py --device cuda: step time and peak memory ratios
#                  against plain PyTorch, resnet18, batch 128, T = 4, 8, bptt and rate_m
#   5 memory_time  python -m minirate.study memory-time --device cuda, resnet18, T = 1, 2, 4, 8
#   6 profile      benchmarks/profile_step.py: share of conv, LIF, batchnorm, launches in a step,
#                  with the fused kernels (MINIRATE_FUSED=1) and without (MINIRATE_FUSED=0)
#   7 conv         benchmarks/bench_conv.py --device cuda --algo both: im2col and Winograd timed
#                  on every resnet18 conv shape, batch 128, against the GPU's own GEMM ceiling
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BUDGET=${GPU_CHECK_BUDGET:-480}
mkdir -p "$OUT" || { echo "error: cannot create OUT=$OUT" >&2; exit 1; }
OUT=$(cd "$OUT" && pwd)
[ -d .gpu_deps ] && export PYTHONPATH="$PWD/.gpu_deps${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# the interpreter: $PYTHON, else python3 (on some GPU images the only one), else python; every
# stage's "python" is this one
PY=${PYTHON:-$(command -v python3 || command -v python)}
python() { "$PY" "$@"; }
export -f python
export PY
# pytest-xdist, where installed, spreads the CuPy tests over 8 processes sharing the GPU
XDIST=$("$PY" -c 'import xdist' 2>/dev/null && echo "-n 8")
START=$SECONDS
FAILED=0
SUMMARY="$OUT/SUMMARY.md"
echo "# GPU check: device $DEVICE, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')" > "$SUMMARY"
echo "" >> "$SUMMARY"
echo "| stage | status | seconds | log |" >> "$SUMMARY"
echo "|---|---|---|---|" >> "$SUMMARY"

# stage NAME MAX_SECONDS COMMAND: run COMMAND (a bash string) with a time box, log and summarise
stage() {
    local name=$1 max=$2 cmd=$3
    local left=$((BUDGET - (SECONDS - START)))
    local box=$((max < left - 5 ? max : left - 5))
    if [ "$box" -lt 20 ]; then
        echo "| $name | skipped: ${left} s left of the budget | 0 | - |" >> "$SUMMARY"
        echo "== $name: skipped (${left} s left)"
        return
    fi
    echo "== $name (at most ${box} s): $cmd"
    local t0=$SECONDS
    { echo "\$ $cmd"; echo; } > "$OUT/$name.log"
    timeout -k 10 "$box" bash -c "$cmd" >> "$OUT/$name.log" 2>&1
    local rc=$?
    local status="ok"
    [ $rc -ne 0 ] && status="FAILED (exit $rc)"
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="TIMED OUT after ${box} s"
    [ $rc -ne 0 ] && FAILED=$((FAILED + 1))
    echo "| $name | $status | $((SECONDS - t0)) | $name.log |" >> "$SUMMARY"
    echo "   $status, $((SECONDS - t0)) s"
    tail -n 3 "$OUT/$name.log" | sed 's/^/   | /'
}

if [ "$DEVICE" = cuda ]; then
    AGREE="--devices cpu,cuda"
    TRAIN="--arch small --T 2 --batch-size 64 --lr 0.1"
    TORCH="--device cuda --T 4 8 --batch-size 128 --repeats 5"
    STUDY="--device cuda --arch resnet18 --batch-size 128 --T 1,2,4,8 --methods bptt,rate_m,rate_s"
    PROF="--device cuda --arch resnet18 --batch-size 128 --T 4 --methods bptt rate_m"
    FUSED="--device cuda"
    FUSED_RUN=""
    NCCL="--device cuda --expect nccl"
    CONV="--device cuda --algo both --batch 128 --repeats 3"
    CONV_RUN=""
else            # the same stages on the CPU, sized to take seconds
    AGREE="--devices cpu,cpu --steps 3 --batch-size 8"
    TRAIN="--arch small --width 0.5 --T 1 --batch-size 50 --lr 0.1"
    TORCH="--device cpu --T 1 --batch-size 2 --repeats 1"
    STUDY="--device cpu --arch small --width 0.25 --batch-size 4 --T 1,2 --steps 1 --methods bptt,rate_m"
    PROF="--device cpu --arch small --width 0.25 --batch-size 4 --T 2 --methods bptt rate_m"
    FUSED="--device strict --batch 4 --T 2 --channels 8 --size 8 --repeat 2"
    FUSED_RUN="-m tests.strict_run"      # the kernels compiled for the host, on the stand-in
    NCCL="--device strict --python '$PY -m tests.strict_run' --expect nccl"   # NCCL stand-in
    CONV="--device strict --algo both --batch 2 --repeats 1 --width 0.0625"
    CONV_RUN="-m tests.strict_run"       # the device path on the stand-in
fi

stage env 30 "echo \"python: \$PY\"; nvidia-smi; python -c 'import sys; print(sys.version)';
for m in numpy cupy torch PIL h5py pytest matplotlib threadpoolctl mpi4py; do
    python -c \"import \$m; print('\$m', getattr(\$m, '__version__', '?'))\" 2>&1 | tail -n 1; done
python -W ignore -c 'import cupy, cupy.cuda.nccl; cupy.show_config()' 2>&1 | head -40"

stage tests 200 "python -m pytest -q -rs -p no:cacheprovider -k 'cupy and not strict' --maxfail=25 $XDIST tests
rc=\$?; [ $DEVICE = cpu ] || [ \$rc -ne 0 ] || grep -qE '[0-9]+ passed' '$OUT/tests.log' ||
{ echo 'no CuPy test ran: see the skip reasons above'; exit 4; }; exit \$rc"

stage fused 60 "python $FUSED_RUN benchmarks/fused_check.py $FUSED --out '$OUT/fused'"

stage agreement 75 "python benchmarks/gpu_cpu_agreement.py $AGREE --out '$OUT/agreement'"

stage train 150 "R='--dataset cifar10-sample $TRAIN --method rate --no-progress --out $OUT/train'
python train.py \$R --device $DEVICE --epochs 3 || exit 1
python -c \"import json, sys; r = [json.loads(l) for l in open('$OUT/train/metrics.jsonl')];
acc = max(x['test_acc'] for x in r if 'test_acc' in x); print('best test accuracy', acc);
print('LEARNS' if acc >= 0.15 else 'DOES NOT LEARN (chance 0.10, wanted >= 0.15)');
sys.exit(0 if acc >= 0.15 else 3)\"; learned=\$?
python train.py \$R --device cpu --epochs 4 --resume auto || exit 1
python train.py \$R --device $DEVICE --epochs 5 --resume auto || exit 1
echo 'resumed: the GPU checkpoint on the CPU, then the CPU checkpoint on the GPU'
exit \$learned"

stage nccl 60 "python benchmarks/nccl_check.py $NCCL --out '$OUT/nccl'"

stage torch 120 "python benchmarks/compare_torch.py $TORCH --json '$OUT/compare_torch.json'"

stage memory_time 90 "python -m minirate.study memory-time $STUDY --out '$OUT/memory_time'"

stage profile 90 "MINIRATE_FUSED=1 python benchmarks/profile_step.py $PROF --repeats 3 --json '$OUT/profile.json' &&
echo && echo '-- the same without the fused kernels (MINIRATE_FUSED=0):' &&
MINIRATE_FUSED=0 python benchmarks/profile_step.py $PROF --repeats 3 --json '$OUT/profile_unfused.json'"

stage conv 45 "python $CONV_RUN benchmarks/bench_conv.py $CONV"

echo "" >> "$SUMMARY"
echo "total: $((SECONDS - START)) s of a budget of $BUDGET s; $FAILED stage(s) failed" >> "$SUMMARY"
cat "$SUMMARY"
[ "$FAILED" -eq 0 ]         # the exit status: 0 when no stage failed (skipped ones do not count)
