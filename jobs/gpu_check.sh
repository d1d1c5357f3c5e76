#!/usr/bin/env bash
# Run first on a GPU machine: everything this product does differently on a GPU, in under 8 minutes on one GPU,
# stopping at the first error; it prints the README cost model's GPU rows. Without CUDA it runs the steps that
# need none and exits with code 3, saying so. Usage: jobs/gpu_check.sh [--output DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" jobs/benchmark.py gpu-check "$@"
