#!/usr/bin/env bash
# Throughput and utility on one CUDA GPU with full SST-2, within 10 minutes; the results page
# marks these rows GPU.
#
#   bash simulations/gpu_bench.sh           # needs a CUDA GPU; writes docs/results/gpu/*.json,
#                                           # then regenerates docs/results.md
#   bash simulations/gpu_bench.sh --check   # no GPU needed: the same steps at a tiny size on
#                                           # whatever device there is, into a temp folder
#
# Time budget (each step is killed at its limit; a benchmark saves its JSON after every row, so
# a step cut short still leaves its finished rows, marked incomplete on the page):
#   throughput  <= 180 s: all 67,349 training rows, one epoch per mode and repeat, 2 repeats
#   utility     <= 390 s: the nine rows in order (SST-2 with the main job's compute, then
#                         TREC); rows past the limit are missing
#   page        <=  30 s
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  -h|--help) sed -n 2,15p "$0"; exit 0 ;;
  *) echo "gpu_bench.sh: unknown argument '$1' (use --check, or nothing)" >&2; exit 2 ;;
esac

export TOKENIZERS_PARALLELISM=false HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
has_cuda=$(python -c "import torch; print(int(torch.cuda.is_available()))")

if [ "$mode" = full ]; then
  if [ "$has_cuda" != 1 ]; then
    echo "gpu_bench.sh: torch sees no CUDA GPU; nothing measured" \
         "(bash simulations/gpu_bench.sh --check tests this script without one)" >&2
    exit 3
  fi
  out=docs/results/gpu
  device=cuda
  # on a GPU one whole Poisson batch at a time is fastest (no length-sorted micro-batches)
  rc="micro-batch-size=0 eval-batch-size=512"
  throughput_args=(--rows -1 --steps 264 --repeats 2)
  utility_args=(--gpus-per-client 0.5 --cpus-per-client 4)
  limits=(180 390)
else
  out=$(mktemp -d "${TMPDIR:-/tmp}/fedtune-gpu-check-XXXXXX")
  device=auto
  rc="micro-batch-size=0"
  gpus=0
  [ "$has_cuda" = 1 ] && gpus=0.5
  throughput_args=(--quick)
  utility_args=(--quick --only central-nodp,fed10-iid-dp8 --gpus-per-client "$gpus")
  limits=(300 600)
fi

status=0
echo "== throughput ($device, limit ${limits[0]} s) -> $out"
timeout "${limits[0]}" python -m simulations.bench throughput --device "$device" --out "$out" \
  --run-config "$rc" "${throughput_args[@]}" || status=$?
echo "== utility ($device, limit ${limits[1]} s) -> $out"
timeout "${limits[1]}" python -m simulations.bench utility --device "$device" --out "$out" \
  --run-config "$rc" --timeout 300 "${utility_args[@]}" || status=$?

if [ "$mode" = full ]; then
  timeout 30 python -m simulations.results
else
  # the page generator reads GPU rows from <results>/gpu/: build a throwaway page from this run
  mkdir -p "$out/page/gpu" && cp "$out"/*.json "$out/page/gpu/"
  timeout 30 python -m simulations.results --results "$out/page"
  echo "check: results in $out, page $out/page/results.md"
fi
exit "$status"
