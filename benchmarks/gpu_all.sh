#!/usr/bin/env bash
# Every speed benchmark in one GPU session (~8 minutes on an H200), results into $OUT (default benchmarks/results/latest):
#   benchmarks/gpu_all.sh [--sweep]      # --sweep first re-measures the kernel configs (worker/w4a16_configs.json)
# Needs redis-server on PATH (or REDIS_SERVER=...) for the queue benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-benchmarks/results/latest}" TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/xwinbot-triton-cache}"
mkdir -p "$OUT"
[ "${1:-}" = "--sweep" ] && timeout 240 python3 benchmarks/int4_kernels.py --sweep | grep "^sweep"
timeout 60 python3 benchmarks/check_fp8_cache.py
timeout 120 python3 benchmarks/int4_kernels.py | tail -1
timeout 200 python3 benchmarks/gpu_inference.py | grep "runtime_\|hf_gen\|check\|tiny\|greedy\|speedup"
timeout 200 python3 benchmarks/queue_e2e.py --redis-server "${REDIS_SERVER:-redis-server}" \
  | grep "^concurrency\|^warm\|^baseline\|Traceback"
