#!/usr/bin/env bash
# Every GPU figure that README reports as pending, in one go on one GPU:
#   bash benchmarks/gpu_checks.sh DATA [OUT]
# DATA holds the prepared polyp/ and footulcer/ folders (scripts/prepare_data.py); OUT (default gpu_results/)
# receives the logs and JSON files. Steps: the CUDA tests, the loss benchmark with the FlexibleUNet step,
# the throughput benchmark (ceiling vs bundle pipeline), then the timed seven-loss polyp study on fold 1.
set -euo pipefail
data=${1:?usage: bash benchmarks/gpu_checks.sh DATA [OUT]}
out=${2:-gpu_results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -m pytest -q -k cuda tests 2>&1 | tee "$out/cuda_tests.log"
python benchmarks/bench_losses.py --device=cuda --output="$out/bench_losses.json" 2>&1 | tee "$out/bench_losses.log"
python benchmarks/throughput.py --device=cuda --data_dir="$data" --output="$out/throughput.json" 2>&1 |
    tee "$out/throughput.log"
start=$(date +%s)
python scripts/run_study.py polyp --data_dir="$data/polyp" --folds='[1]' --device=cuda \
    --output_dir="$out/study_polyp" 2>&1 | tee "$out/study_polyp.log"
echo "seven-loss polyp study, fold 1: $(($(date +%s) - start)) s wall" | tee -a "$out/study_polyp.log"
