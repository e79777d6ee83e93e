#!/usr/bin/env bash
# Every pending GPU figure, in phases that each end inside the 10-minute limit of one command on a lent GPU
# machine (15 minutes of machine time in all, cold start included, so about two phases per session). Here, once:
#   python benchmarks/gpu_kit.py pack --data_dir=DATA --output=.gpu      # prepared data + wheels, <= 56 MiB
# There (the device tool's run, carry [".gpu"]; it sets OUT), one command per phase:
#   bash benchmarks/gpu_checks.sh 1    # wheels, CUDA tests, loss benchmark, throughput (ceiling vs bundle)
#   bash benchmarks/gpu_checks.sh 2a   # polyp fold 1 at 40 epochs: CE, soft Dice, CE + Dice, linear CE->Dice
#   bash benchmarks/gpu_checks.sh 2b   # the same for CE then Dice, balanced CE, DBCE (2a + 2b: the seven losses)
#   bash benchmarks/gpu_checks.sh 3    # DBCE radius sweep (R = 1, 3, 5, 9) on polyp fold 1 at 20 epochs
# A 40-epoch polyp run alone took 3.9 min on an H200 (docs/performance.md), so a phase runs its trainings
# side by side on the one GPU (a run alone used 40% of the training ceiling and 3.4 GiB). Here, merge the
# parts: run_study.py keep on each unpacked tar.gz into one folder, then run_study.py report on it.
# Everything lands in $OUT as few files (phase<N>.log, JSON, one tar.gz per study). Each line of the log
# carries the elapsed seconds, so a phase cut by the limit still says how far it got; a failed step is
# logged and the next one runs. Environment: KIT (.gpu), OUT (gpu_results), DEVICE (cuda), TINY=1 for the
# CPU dry run of tests/test_gpu_kit.py (tiny sizes and epochs), STEP_LIMIT (seconds, default 540): a step
# still running then is stopped, and the runs it finished are packed (a cut run is lost: weights stay there).
set -uo pipefail
phase=${1:?usage: bash benchmarks/gpu_checks.sh 1|2a|2b|3}
kit=${KIT:-.gpu}
out=${OUT:-gpu_results}
device=${DEVICE:-cuda}
tiny=${TINY:-0}
step_limit=${STEP_LIMIT:-540}
mkdir -p "$out"
log_file="$out/phase$phase.log"
t0=$(date +%s)
log() { echo "[$(($(date +%s) - t0)) s] $*" | tee -a "$log_file"; }
step() {  # step NAME COMMAND...: run it, its output into the log, its status and time on one line
    local name=$1 start=$(date +%s)
    shift
    log "start: $name"
    timeout --kill-after=20 "$step_limit" "$@" >>"$log_file" 2>&1
    local code=$?
    [ $code -eq 124 ] && log "stopped at STEP_LIMIT=$step_limit s: $name"
    log "$([ $code -eq 0 ] && echo done || echo "FAILED (exit $code)"): $name in $(($(date +%s) - start)) s"
    return $code
}
export PYTHONUNBUFFERED=1

if compgen -G "$kit/wheels/*.whl" >/dev/null && [ ! -d "$kit/site" ]; then
    step "install the kit's wheels" python -m pip install --quiet --no-index --no-deps --target "$kit/site" \
        "$kit"/wheels/*.whl
fi
export PYTHONPATH="$PWD:$(realpath -m "$kit/site")${PYTHONPATH:+:$PYTHONPATH}"
step "verify the kit" python benchmarks/gpu_kit.py verify --kit="$kit" || exit 1

declare -A study_parts  # phase -> the losses it trains
bundles='[polyp_ce,polyp_dbce]'
[ -d "$kit/data/footulcer" ] && bundles='[polyp_ce,polyp_dbce,footulcer_ce,footulcer_dbce]'
if [ "$tiny" = 1 ]; then
    bench_args=(--size=64 --repeats=2)
    bundles='[polyp_dbce]'
    throughput_args=(--image_size=32 --epochs=2 --ceiling_steps=2 --num_workers=0)
    study_args=(--image_size=32 --batch_size=4 --val_batch_size=4 --num_workers=0)
    study_parts=([2a]='[ce]' [2b]='[dbce]')
    study_epochs=1
    sweep_epochs=1
    radii=(1 5)
else
    bench_args=()
    throughput_args=()
    study_args=()
    study_parts=([2a]='[ce,dice,ce_dice,ce_linear_dice]' [2b]='[ce_finetune_dice,balanced_ce,dbce]')
    study_epochs=40
    sweep_epochs=20
    radii=(1 3 5 9)
fi

case "$phase" in
1)
    log "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
    python - >>"$log_file" 2>&1 <<'EOF'
import importlib.util, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.cuda.is_available())
wanted = ["monai", "ignite", "nibabel", "fire", "PIL", "scipy", "matplotlib", "tensorboard", "yaml", "pytest", "tifffile"]
print("importable:", {name: importlib.util.find_spec(name) is not None for name in wanted})
EOF
    if [ "$device" = cuda ]; then
        step "CUDA tests" python -m pytest -q -p no:cacheprovider -k cuda tests/test_augment.py tests/test_losses.py
    fi
    step "loss benchmark" python benchmarks/bench_losses.py --device="$device" "${bench_args[@]}" \
        --output="$out/bench_losses.json"
    step "throughput: ceiling vs bundle pipeline" python benchmarks/throughput.py --device="$device" \
        --data_dir="$kit/data" --bundles="$bundles" "${throughput_args[@]}" --output="$out/throughput.json"
    ;;
2a | 2b)
    study="$out/study_polyp_$phase"
    bundles_of_part=${study_parts[$phase]}
    runs=$(($(tr -cd , <<<"$bundles_of_part" | wc -c) + 1))
    step "polyp fold 1, $bundles_of_part, $runs side by side" python scripts/run_study.py polyp \
        --data_dir="$kit/data/polyp" --folds='[1]' --device="$device" --output_dir="$study" \
        --bundles="$bundles_of_part" --max_parallel="$runs" --epochs="$study_epochs" "${study_args[@]}"
    tar -czf "$out/study_polyp_$phase.tar.gz" -C "$study" --exclude='*.pt' --exclude='example_images' \
        --exclude='example_masks' --exclude='data' . && rm -rf "$study"
    log "packed $out/study_polyp_$phase.tar.gz (no weights)"
    ;;
3)
    threads=$(($(nproc) / ${#radii[@]}))  # the cores shared among the runs, as --max_parallel does
    [ "$threads" -ge 1 ] || threads=1
    for radius in "${radii[@]}"; do  # side by side, one study folder each
        sweep="$out/sweep_r$radius"
        step "DBCE R = $radius, polyp fold 1, $sweep_epochs epochs" env OMP_NUM_THREADS="$threads" \
            python scripts/run_study.py polyp \
            --data_dir="$kit/data/polyp" --folds='[1]' --device="$device" --output_dir="$sweep" \
            --bundles='[dbce]' --examples=False --dbce_radius="$radius" --epochs="$sweep_epochs" "${study_args[@]}" &
    done
    wait
    tar -czf "$out/dbce_sweep.tar.gz" -C "$out" --exclude='*.pt' $(cd "$out" && ls -d sweep_r*) &&
        rm -rf "$out"/sweep_r*
    log "packed $out/dbce_sweep.tar.gz"
    ;;
*)
    log "unknown phase $phase (1, 2a, 2b or 3)"
    exit 2
    ;;
esac
log "phase $phase finished"
