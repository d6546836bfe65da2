#!/usr/bin/env bash
# Extraction on a GPU machine in one run of at most ~8 minutes, install included:
#   model-only and extract frames/s for ViT-B/16 and ViT-g/14 (bf16 autocast, with and without --compile),
#   1 GPU vs all GPUs, PyAV vs torchcodec, and decode-only with all cores (the CPU's limit).
#
#   bash benchmarks/gpu_extract.sh                      # on the GPU machine: JSON + table in bench_out/gpu_extract
#   bash benchmarks/gpu_extract.sh --device cpu         # dry run on a CPU (vit-ti at 32 px, a few videos)
#   bash benchmarks/gpu_wheels.sh                       # here, for an offline GPU machine: carry .whl/ there
#
# Every row is written to bench_out/gpu_extract/bench_extract_gpu.json as soon as it is measured, and each stage
# runs under its own time limit, so a run cut short keeps what it measured. Models are random-init (speed does
# not depend on the weights; no hub access is needed).
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
[ "${1:-}" = "--device" ] && DEVICE="${2:-cuda}"
OUT=${OUT:-bench_out/gpu_extract}
BUDGET=${BUDGET:-470}  # seconds for the whole script
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
PY=.venv/bin/python

# -- install. Offline machine with python3 + torch (this workplace's H200): the wheels of benchmarks/gpu_wheels.sh,
# carried in .whl/, installed without an index (torchcodec rows then report that it is missing). Otherwise the
# Makefile's venv (torch, torchvision and torchcodec pinned; FFmpeg's libs for torchcodec when root + apt).
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD/src
  PY=python3
elif [ ! -f .venv/.installed ]; then
  timeout $(( $(left) - 240 )) make install || { echo "install did not finish in time"; exit 1; }
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count(), 'GPUs')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -8

run() {  # run <seconds> <bench_extract.py args...>: one stage under a time limit (what it measured stays)
  local limit=$1; shift
  [ "$(left)" -lt 20 ] && { echo "skipped (time budget): $*"; return; }
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  timeout --signal=INT "$limit" $PY benchmarks/bench_extract.py --suite gpu --out "$OUT/$1" "${@:2}" \
    || echo "stage $1 stopped (limit ${limit}s or error)"
}

if [ "$DEVICE" = cuda ]; then
  # ViT-B/16: every row (decode-only per decoder, model-only eager/compiled, extract 1 GPU / all, PyAV /
  # torchcodec, compiled). 64 copies of the 132-frame 720p clip: 8,448 frames, parts of 2 videos so every GPU
  # has parts.
  run 200 vitb --device cuda --models vit-b --copies 64 --videos-per-part 2
  # ViT-g/14 (~1B parameters): model-only eager/compiled, then extract on 1 GPU and on all (each worker builds
  # the model on its CPU first: about a minute).
  run $(( $(left) - 5 )) vitg --device cuda --models vit-g --copies 16 --videos-per-part 1 \
    --extract-rows 1gpu-pyav,all-pyav,all-torchcodec
else
  run 300 cpu --device cpu --models vit-ti --img-size 32 --copies 2 --videos-per-part 1 --batch-size 16
fi

# one table from every stage's JSON
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
rows = []
for path in sorted(Path(sys.argv[1]).glob("*/bench_extract_gpu.json")):
    data = json.loads(path.read_text())
    head = f"{data.get('gpu_name') or data['args']['device']}, {data['gpus']} GPU(s), {data['cores']} cores"
    rows += [(head, r) for r in data["rows"]]
print("\n| machine | row | model | GPUs | decoder | compile | batch | frames/s | parts only | steady |")
print("|---|---|---|---:|---|---|---:|---:|---:|---:|")
for head, r in rows:
    value = f"{r['frames_per_s']:.0f}" if "frames_per_s" in r else r.get("error", "")[:60]
    fmt = lambda k: f"{r[k]:.0f}" if k in r else ""
    print(f"| {head} | {r['kind']} | {r.get('model', '')} | {r.get('gpus', '')} | {r.get('decoder', '')} | "
          f"{r.get('compile', '')} | {r.get('batch', '')} | {value} | {fmt('fanout_frames_per_s')} | "
          f"{fmt('steady_frames_per_s')} |")
EOF
echo "total $(( $(date +%s) - START )) s"
