#!/usr/bin/env bash
# The speed benchmarks in GPU calls sized to the per-call limit (600 s), logs and JSON into $OUT (default
# benchmarks/results/latest) as they go, so a call cut short still returns what finished:
#   benchmarks/gpu_all.sh sweep    # ~8 min: profile whole decode steps and prefills (where the time goes), then
#                                  # tune the kernel configs inside the step ($OUT/w4a16_configs.json)
#   benchmarks/gpu_all.sh          # ~6 min: kernel and quantized (fp8, int8) cache checks, batch-1 inference vs tinygemm and HF, the queue
#                                  # benchmark
#   benchmarks/gpu_all.sh roofline # ~6 min: the one-row kernel against a plain read of its bytes, per shape
#   benchmarks/gpu_all.sh configs  # ~8 min: sweep the kernel configs with each kernel alone ($OUT/w4a16_configs.json)
#   benchmarks/gpu_all.sh int8     # ~9 min: the int8 K/V cache on the GPU: GPU tests, greedy check, the decode
#                                  # step in bf16 and int8 (batch 1 and 32 rows)
#   benchmarks/gpu_all.sh int8-queue  # ~6 min: 32 users through the queue, bf16 cache then int8, each its own process
#   benchmarks/gpu_all.sh prefill  # ~4 min: the fused int4 kernel at 65-1024 rows against rebuilding W (prefill_gemm)
#   benchmarks/gpu_all.sh one-dot  # ~8 min: the kernels' GPU tests, then the 32-row step's int4 configs tuned in the
#                                  # step with and without one dot (NOTES row 67): the step before and after
#   benchmarks/gpu_all.sh one-row-positions  # ~9 min: the shipped one-row configs, tuned at 900 tokens in, checked
#                                  # at 100-1,800 (NOTES row 100): tuned again on the mean step over those lengths,
#                                  # then that table against the one before at each length
#   benchmarks/gpu_all.sh launch-next  # ~5 min: the kernels' GPU tests, then the one-row step with decode attention's
#                                  # kernels letting the next launch after their wait or at their end, 100-1,800 tokens in
#   benchmarks/gpu_all.sh copy-warps  # ~9 min: the kernels' GPU tests, then the 32- and 16-row steps' int4 configs tuned
#                                  # in the step against the Gluon copy-warp kernel's (NOTES rows 81, 83), the table in
#                                  # $OUT/w4a16_configs.json; then the step at 2-32 rows with the table before and after
#   benchmarks/gpu_all.sh overlap   # ~5 min: the kernels' and architectures' GPU tests, then the captured decode step
#                                  # at 1, 8 and 32 rows with plain and overlapping launches (worker/kernels/launch.py)
#   benchmarks/gpu_all.sh fp8-prefill  # ~3 min: the fp8 GPU tests, the prompts' int4 matmuls in bf16 and fp8 (13B
#                                  # shapes), then 32 users through the queue with each, each its own process (NOTES row 71)
#   benchmarks/gpu_all.sh passes  # ~7 min: prefill passes of a burst's shapes timed on the host, quiet and beside busy
#                                  # threads, then 32 users through the queue asking from their own process and from
#                                  # the worker's (each its own process), every prefill pass logged
#   benchmarks/gpu_all.sh prefill-graphs  # ~6 min: the captured prefill's GPU tests, prefill passes eager and captured
#                                  # (quiet, beside busy threads), then 1 and 32 users through the queue
#   benchmarks/gpu_all.sh replay  # ~8 min: prefill passes eager and replayed under the profiler (NOTES row 75), then
#                                  # every architecture GPU test (captured prefill with fp8 and quantized caches)
#   benchmarks/gpu_all.sh idle-captures  # ~5 min: the captured prefill's GPU tests, then 32 users through the queue
#   benchmarks/gpu_all.sh graph-rows N...  # ~3.5 min each: 32 users through the queue, prefill captured up to N rows
#   benchmarks/gpu_all.sh ab REV|DIR [USERS...]  # ~8 min: this tree's GPU tests, then 32 users (or USERS) through
#                                  # the queue on REV's tree and on this one
#   benchmarks/gpu_all.sh 8b       # ~9 min: the Llama-3-8B layer shapes' kernel configs, then 13B and 8B batch 1 in one
#                                  # run (each its own process), the 8B at 32 users through the queue
# Needs redis-server on PATH (or REDIS_SERVER=...) for the queue benchmark. Each benchmark runs as a module from the
# repository root; its JSON records the commit (or $XWINBOT_COMMIT where the copy has no .git), command and GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-benchmarks/results/latest}" TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/xwinbot-triton-cache}"
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute: `ab` runs its base from another directory
step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to $OUT/NAME.log, its summary lines shown
  local name=$1 seconds=$2
  shift 2
  timeout "$seconds" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $?"
  grep -E "^qkv|^o:|^o rows|^gate_up|^down|^prefill|^correctness|^matmul ms|^fp8|^quantized|^runtime_|^hf_gen|^decode_attention|check|^concurrency|^warm|^baseline|^batch|^  |^\| |^rows|^captured|^gate/up|passed|failed|Error" \
    "$OUT/$name.log" | cut -c1-600
}
if [ "${1:-}" = "roofline" ]; then
  step gemv_roofline 400 python3 -u -m benchmarks.kernels.gemv_roofline --seconds 330
elif [ "${1:-}" = "configs" ]; then
  step sweep_configs 560 python3 -u -m benchmarks.kernels.sweep_configs --rows 1 32 16 --seconds-per-shape 35
elif [ "${1:-}" = "8b" ]; then
  # The 8B's layer shapes first get configs of their own (the 13B's are kept), written into this copy's table
  # and into $OUT, so both shapes run tuned in the same run.
  step sweep_configs_8b 100 python3 -u -m benchmarks.kernels.sweep_configs --model llama3-8b --rows 1 32 \
    --seconds-per-shape 6 --write
  cp worker/kernels/w4a16_configs.json "$OUT/"
  step gpu_inference_13b_8b 300 python3 -u -m benchmarks.speed.gpu_inference --shape xwin13b,llama3-8b \
    --no-hf-baseline llama3-8b
  step queue_e2e_8b 170 python3 -u -m benchmarks.speed.queue_e2e --shape llama3-8b --concurrency 32 --no-hf-baseline \
    --no-restart --redis-server "${REDIS_SERVER:-redis-server}"
elif [ "${1:-}" = "int8" ]; then
  # (tests/unit/kernels build CPU tensors for Triton's interpreter; on a GPU the quantized caches are checked here)
  step quantized_cache_gpu_tests 150 python3 -m pytest -q -x -p no:cacheprovider \
    tests/unit/inference/test_architectures_gpu.py -k quantized_cache
  step check_kv_cache 60 python3 -u -m benchmarks.quality.check_kv_cache
  for dtype in auto int8; do  # each dtype's JSON in its own folder
    mkdir -p "$OUT/$dtype" && OUT="$OUT/$dtype" step "attention_$dtype" 150 python3 -u -m \
      benchmarks.kernels.decode_attention_configs --step --kv-cache-dtype $dtype
  done
elif [ "${1:-}" = "int8-queue" ]; then
  for dtype in auto int8; do
    mkdir -p "$OUT/$dtype" && OUT="$OUT/$dtype" step "queue_e2e_$dtype" 180 python3 -u -m benchmarks.speed.queue_e2e \
      --concurrency 32 --no-hf-baseline --no-restart --kv-cache-dtype $dtype --redis-server "${REDIS_SERVER:-redis-server}"
  done
elif [ "${1:-}" = "passes" ]; then
  step prefill_passes 100 python3 -u -m benchmarks.speed.prefill_passes
  for users in own worker; do
    flag=$([ $users = worker ] && echo --users-in-worker-process)
    mkdir -p "$OUT/$users" && OUT="$OUT/$users" step "queue_e2e_users_$users" 180 python3 -u -m benchmarks.speed.queue_e2e \
      --concurrency 32 --no-hf-baseline --no-restart $flag --redis-server "${REDIS_SERVER:-redis-server}"
  done
elif [ "${1:-}" = "prefill-graphs" ]; then
  step prefill_graph_gpu_tests 150 python3 -m pytest -q -x -p no:cacheprovider \
    tests/unit/inference/test_architectures_gpu.py -k "captured_prefill or cuda_graphs_give"
  step prefill_passes 100 python3 -u -m benchmarks.speed.prefill_passes
  step queue_e2e 170 python3 -u -m benchmarks.speed.queue_e2e --concurrency 1 32 --no-hf-baseline --no-restart \
    --redis-server "${REDIS_SERVER:-redis-server}"
elif [ "${1:-}" = "replay" ]; then
  step profile_prefill 200 python3 -u -m benchmarks.speed.profile_decode --prefill-only
  step architecture_gpu_tests 330 python3 -m pytest -q -p no:cacheprovider tests/unit/inference/test_architectures_gpu.py
elif [ "${1:-}" = "idle-captures" ]; then
  # the captured prefill's GPU tests (start, idle captures, replay against eager), then 32 users through the queue:
  # its worker_start_s and prefill_captures.idle_after_start_s say what the start and the idle time paid
  step prefill_graph_gpu_tests 200 python3 -m pytest -q -x -p no:cacheprovider tests/unit/inference/test_prefill_graph_gpu.py \
    tests/unit/inference/test_architectures_gpu.py -k "captured or idle or eagerly"
  step queue_e2e 220 python3 -u -m benchmarks.speed.queue_e2e --concurrency 32 --no-hf-baseline --no-restart \
    --redis-server "${REDIS_SERVER:-redis-server}"
elif [ "${1:-}" = "graph-rows" ]; then
  # graph-rows N...: 32 users through the queue with captured prefill passes up to N padded rows, each its own process
  for rows in "${@:2}"; do
    mkdir -p "$OUT/rows_$rows" && OUT="$OUT/rows_$rows" step "queue_e2e_rows_$rows" 220 python3 -u -m \
      benchmarks.speed.queue_e2e --concurrency 32 --no-hf-baseline --no-restart --prefill-graph-rows "$rows" \
      --redis-server "${REDIS_SERVER:-redis-server}"
  done
elif [ "${1:-}" = "ab" ]; then
  # ab REV [USERS...]: USERS (default 32) through the queue on REV's tree, then on this one, each in its own process
  # (its JSON under $OUT/base). REV is a commit of this copy's .git, or a directory holding REV's tree with its hash
  # in REV_COMMIT (the GPU machine's copy has no .git: `git archive REV | tar -x -C .whl/base` here, carried)
  users=("${@:3}") && [ ${#users[@]} -gt 0 ] || users=(32)
  if [ -d "${2:?usage: gpu_all.sh ab REV|DIR [USERS...]}" ]; then
    base=$(cd "$2" && pwd) rev=${REV_COMMIT:?a directory needs REV_COMMIT}
  else
    rev=$(git rev-parse "$2") || exit 2
    base=/tmp/xwinbot-base-$rev
    rm -rf "$base" && mkdir -p "$base" && git archive "$rev" | tar -x -C "$base"
  fi
  mkdir -p "$OUT/base"
  # this tree's CUDA paths first (graphs, mixed steps, settings written from pinned memory): nothing is measured
  # on code that gives wrong tokens (AB_TESTS=0 where the same call has just run them)
  [ "${AB_TESTS:-1}" = 0 ] || step gpu_tests 200 python3 -m pytest -q -x -p no:cacheprovider tests/unit/inference/test_architectures_gpu.py \
    tests/unit/inference/test_prefill_graph_gpu.py
  (cd "$base" && OUT="$OUT/base" XWINBOT_COMMIT=$rev step queue_e2e_base 180 python3 -u -m benchmarks.speed.queue_e2e \
    --concurrency "${users[@]}" --no-hf-baseline --no-restart --redis-server "${REDIS_SERVER:-redis-server}")
  step queue_e2e 180 python3 -u -m benchmarks.speed.queue_e2e --concurrency "${users[@]}" --no-hf-baseline \
    --no-restart --redis-server "${REDIS_SERVER:-redis-server}"
elif [ "${1:-}" = "one-row-positions" ]; then
  positions=(100 300 600 1800)
  cp worker/kernels/w4a16_configs.json "$OUT/w4a16_configs.before.json"
  step tune_in_step_1 420 python3 -u -m benchmarks.kernels.tune_in_step --batches 1 --kernels gemv --seconds 380 \
    --positions "${positions[@]}" --write
  cp worker/kernels/w4a16_configs.json "$OUT/"
  mkdir -p "$OUT/against" && OUT="$OUT/against" step step_against_before 120 python3 -u -m \
    benchmarks.kernels.tune_in_step --against "$OUT/w4a16_configs.before.json" --batches 1 --positions "${positions[@]}"
elif [ "${1:-}" = "launch-next" ]; then
  step kernel_gpu_tests 120 python3 -m pytest -q -p no:cacheprovider tests/unit/kernels -k on_the_gpu
  step attention_launch_next 300 python3 -u -m benchmarks.kernels.attention_launch_next --positions 100 300 600 1800
elif [ "${1:-}" = "one-dot" ]; then
  step kernel_gpu_tests 120 python3 -m pytest -q -p no:cacheprovider tests/unit/kernels -k on_the_gpu
  step tune_in_step_32 420 python3 -u -m benchmarks.kernels.tune_in_step --batches 32 --kernels swap --seconds 360
elif [ "${1:-}" = "copy-warps" ]; then
  # The tuned table goes into this copy's worker/ (and $OUT), so the step at 2-32 rows is then timed with the
  # table before (kept as $OUT/w4a16_configs.before.json) and the new one, in the same call
  step kernel_gpu_tests 120 python3 -m pytest -q -p no:cacheprovider tests/unit/kernels -k on_the_gpu
  cp worker/kernels/w4a16_configs.json "$OUT/w4a16_configs.before.json"
  step tune_in_step_32 430 python3 -u -m benchmarks.kernels.tune_in_step --batches 32 16 --kernels copy_warps \
    --seconds 350 --write
  cp worker/kernels/w4a16_configs.json "$OUT/"
  mkdir -p "$OUT/against" && OUT="$OUT/against" step step_against_before 90 python3 -u -m \
    benchmarks.kernels.tune_in_step --against "$OUT/w4a16_configs.before.json" --batches 2 8 16 32
elif [ "${1:-}" = "overlap" ]; then
  step kernel_gpu_tests 120 python3 -m pytest -q -p no:cacheprovider tests/unit/kernels -k on_the_gpu
  step gpu_tests 200 python3 -m pytest -q -x -p no:cacheprovider tests/unit/inference/test_architectures_gpu.py
  step launch_overlap 240 python3 -u -m benchmarks.kernels.launch_overlap --batches 1 8 32
elif [ "${1:-}" = "fp8-prefill" ]; then
  step fp8_gpu_tests 100 python3 -m pytest -q -p no:cacheprovider tests/unit/kernels -k "fp8 and on_the_gpu"
  step prefill_fp8 120 python3 -u -m benchmarks.kernels.prefill_fp8
  for dtype in auto fp8; do
    mkdir -p "$OUT/$dtype" && OUT="$OUT/$dtype" step "queue_e2e_prefill_$dtype" 170 python3 -u -m benchmarks.speed.queue_e2e \
      --concurrency 32 --no-hf-baseline --no-restart --prefill-dtype $dtype --redis-server "${REDIS_SERVER:-redis-server}"
  done
elif [ "${1:-}" = "prefill" ]; then
  step prefill_gemm 230 python3 -u -m benchmarks.kernels.prefill_gemm
elif [ "${1:-}" = "sweep" ]; then
  step profile_decode 120 python3 -u -m benchmarks.speed.profile_decode
  step tune_in_step 400 python3 -u -m benchmarks.kernels.tune_in_step --seconds 330
else
  step int4_check 90 python3 -u -m benchmarks.kernels.int4_kernels --check
  step check_kv_cache 60 python3 -u -m benchmarks.quality.check_kv_cache
  step gpu_inference 180 python3 -u -m benchmarks.speed.gpu_inference
  step queue_e2e 330 python3 -u -m benchmarks.speed.queue_e2e --redis-server "${REDIS_SERVER:-redis-server}"
fi
