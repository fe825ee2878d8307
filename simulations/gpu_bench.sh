#!/usr/bin/env bash
# Speed on one CUDA GPU within 8 minutes; the results page marks these rows GPU.
#
#   bash simulations/gpu_bench.sh             # needs a CUDA GPU; writes docs/results/gpu/*.json,
#                                             # then regenerates docs/results.md
#   bash simulations/gpu_bench.sh --utility   # also the utility rows (about 6 more minutes)
#   bash simulations/gpu_bench.sh --check     # no GPU needed: the same steps at a tiny size on
#                                             # whatever device there is, into a temp folder
#
# Time budget on one H200 (each step is killed at its limit; a benchmark saves its JSON after
# every row, so a step cut short still leaves its finished rows, marked incomplete on the page):
#   MiniLM throughput      <= 120 s: full SST-2, no-DP and the DP modes, 128 steps, 1 repeat
#   random models          <=  60 s: BERT-large shape (335M) and Qwen2.5-0.5B shape as a Llama
#   BERT-large throughput  <= 120 s: no-DP and DP (fused, hooks), 64 steps of batch 256
#   causal-LM tokens/s     <= 150 s: one client's round of 8,192 rows, no DP, then DP
#   page                   <=  20 s
# The random models are built here (speed needs no trained weights, and nothing is downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
utility=0
for arg in "$@"; do
  case "$arg" in
    --check) mode=check ;;
    --utility) utility=1 ;;
    -h|--help) sed -n 2,17p "$0"; exit 0 ;;
    *) echo "gpu_bench.sh: unknown argument '$arg' (use --check, --utility, or nothing)" >&2
       exit 2 ;;
  esac
done

export TOKENIZERS_PARALLELISM=false HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
has_cuda=$(python -c "import torch; print(int(torch.cuda.is_available()))")
models=$(mktemp -d "${TMPDIR:-/tmp}/fedtune-gpu-models-XXXXXX")
trap 'rm -rf "$models"' EXIT

if [ "$mode" = full ]; then
  if [ "$has_cuda" != 1 ]; then
    echo "gpu_bench.sh: torch sees no CUDA GPU; nothing measured" \
         "(bash simulations/gpu_bench.sh --check tests this script without one)" >&2
    exit 3
  fi
  out=docs/results/gpu
  device=cuda
  check=()
  # on a GPU one whole Poisson batch at a time is fastest (no length-sorted micro-batches)
  rc="micro-batch-size=0 eval-batch-size=512"
  minilm_args=(--rows -1 --steps 128 --repeats 1)
  large_args=(--rows -1 --steps 64 --repeats 1)
  causal_args=(--rows 8192 --batch-size 256 --micro-batch-size 64 --max-length 128)
  utility_args=(--gpus-per-client 0.5 --cpus-per-client 4)
  limits=(120 60 120 150 390)
else
  out=$(mktemp -d "${TMPDIR:-/tmp}/fedtune-gpu-check-XXXXXX")
  device=auto
  check=(--check)
  rc="micro-batch-size=0"
  gpus=0
  [ "$has_cuda" = 1 ] && gpus=0.5
  minilm_args=(--quick)
  large_args=(--quick)
  causal_args=(--rows 64 --eval-rows 8 --batch-size 16 --micro-batch-size 8 --max-length 64
               --allow-cpu)
  utility_args=(--quick --only central-nodp,fed10-iid-dp8 --gpus-per-client "$gpus")
  limits=(300 120 300 300 600)
fi
mkdir -p "$out"

status=0
step() {  # step LIMIT NAME CMD...: run CMD under a time limit; a failure is reported, not fatal
  local limit=$1 name=$2
  shift 2
  echo "== $name ($device, limit $limit s) -> $out"
  timeout "$limit" "$@" || { echo "== $name: exit $?" >&2; status=1; }
}

step "${limits[0]}" "throughput: all-MiniLM-L6-v2" \
  python -m simulations.bench throughput --device "$device" --out "$out" --run-config "$rc" \
  "${minilm_args[@]}"
step "${limits[1]}" "random models" sh -c \
  "python -m simulations.random_models bert-large '$models/bert-large' ${check[*]:-} &&
   python -m simulations.random_models llama-0.5b '$models/llama-0.5b' ${check[*]:-}"
step "${limits[2]}" "throughput: BERT-large shape" \
  python -m simulations.bench throughput --device "$device" --out "$out" \
  --name throughput-bert-large --modes no-dp,dp-fused,dp-hooks \
  --run-config "$rc model='$models/bert-large'" "${large_args[@]}"
for dp in off on; do
  name=nodp
  [ "$dp" = on ] && name=dp
  step "$((limits[3] / 2))" "causal-LM tokens/s, DP $dp: Llama 0.5B shape" \
    python -m simulations.gpu_causal_lm --model "$models/llama-0.5b" --dp "$dp" \
    --save "$out/causal-lm-speed-$name.json" "${causal_args[@]}"
done
if [ "$utility" = 1 ]; then
  step "${limits[4]}" "utility" \
    python -m simulations.bench utility --device "$device" --out "$out" --run-config "$rc" \
    --timeout 300 "${utility_args[@]}"
fi

if [ "$mode" = full ]; then
  timeout 20 python -m simulations.results
else
  # the page generator reads GPU rows from <results>/gpu/: build a throwaway page from this run
  mkdir -p "$out/page/gpu" && cp "$out"/*.json "$out/page/gpu/"
  timeout 30 python -m simulations.results --results "$out/page"
  echo "check: results in $out, page $out/page/results.md"
fi
exit "$status"
