#!/usr/bin/env bash
# Stage-2 epochs at T=128 on one GPU from each reader, with GPU utilisation: is the epoch loader-bound or
# compute-bound? Fits one 8-minute run on a GPU machine (~6 min with the defaults below).
#
#   bash benchmarks/gpu_train.sh /tmp/gpu_train                       # on a GPU machine
#   DEVICE=cpu VIDEOS=48 FRAMES=40 DIM=32 T=16 EPOCHS=2 BATCH=8 WORKERS=2 STEPS=5 \
#       bash benchmarks/gpu_train.sh /tmp/gpu_train_cpu              # tiny try on a CPU (no utilisation samples)
#
# Steps: (1) a store of VIDEOS x FRAMES fp16 `cls` tokens of width DIM, laid out as `extract` lays it out;
# (2) compute only: the same stage-2 model (4 temporal blocks, width DIM, bf16 autocast, AdamW) stepped on random
# features already on the device: the epoch rate no loader can beat; (3) `vivitcache train --init none` for EPOCHS
# epochs from each reader, page cache dropped before each (so epoch 1 of a streamed run is cold), while
# nvidia-smi samples utilisation every 200 ms. Results: OUT/gpu_train.json and a Markdown table on stdout; a run
# whose last epoch reaches < 80 % of the compute-only rate is loader-bound.
set -euo pipefail
OUT=${1:?usage: benchmarks/gpu_train.sh OUT_DIR}
PY=${PY:-.venv/bin/python}
VIDEOS=${VIDEOS:-6000} FRAMES=${FRAMES:-300} DIM=${DIM:-768} T=${T:-128} EPOCHS=${EPOCHS:-4} BATCH=${BATCH:-256}
DEVICE=${DEVICE:-cuda} WORKERS=${WORKERS:-4} STEPS=${STEPS:-50}
export VIDEOS FRAMES DIM T EPOCHS BATCH DEVICE WORKERS STEPS OUT
mkdir -p "$OUT"
STORE="$OUT/d${DIM}_${VIDEOS}x${FRAMES}.zarr"

echo "== store $STORE"
STORE="$STORE" $PY - <<'EOF'
import os, sys, time
sys.path.insert(0, "benchmarks")
from pathlib import Path
from bench_loader import make_store
t = time.perf_counter()
make_store(Path(os.environ["STORE"]), int(os.environ["VIDEOS"]), int(os.environ["FRAMES"]), int(os.environ["DIM"]))
print(f"store ready in {time.perf_counter() - t:.1f} s")
EOF

echo "== compute only"
$PY - <<'EOF'
import json, os, time
import torch
from vivitcache.config import ModelConfig
from vivitcache.train_temporal.build import build_token_model
from vivitcache.device import autocast, autocast_dtype
dev = torch.device(os.environ["DEVICE"])
T, D, B, steps = (int(os.environ[k]) for k in ("T", "DIM", "BATCH", "STEPS"))
torch.manual_seed(0)
model = build_token_model(ModelConfig(num_frames=T, num_classes=2, frame_token="cls"), D).to(dev)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.randn(B, T, D, device=dev)  # [B, T, D] features already on the device
y = torch.randint(0, 2, (B,), device=dev)
dtype = autocast_dtype("auto", dev)
def step():
    with autocast(dev, dtype):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
for _ in range(3):
    step()
if dev.type == "cuda":
    torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(steps):
    step()
if dev.type == "cuda":
    torch.cuda.synchronize()
rate = steps * B / (time.perf_counter() - t)
print(f"compute only: {rate:.0f} clips/s")
json.dump({"clips_per_s": rate, "batch": B, "steps": steps}, open(os.path.join(os.environ["OUT"], "compute.json"), "w"))
EOF

run() {  # run NAME [train options...]
  local name=$1; shift
  echo "== $name: $*"
  $PY -c "import sys; sys.path.insert(0, 'benchmarks'); from bench_loader import drop_page_cache; from pathlib import Path; drop_page_cache(Path('$STORE'))"
  local smi=""
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 \
      > "$OUT/$name.smi.csv" & smi=$!
  fi
  date +%s.%N > "$OUT/$name.start"
  $PY -m vivitcache train --store "$STORE" --init none --frames "$T" --epochs "$EPOCHS" --batch-size "$BATCH" \
    --warmup-epochs 0 --device "$DEVICE" --out "$OUT/$name" --overwrite "$@" > "$OUT/$name.log" 2>&1 \
    || { echo "$name failed: see $OUT/$name.log"; tail -5 "$OUT/$name.log"; }
  date +%s.%N > "$OUT/$name.end"
  if [ -n "$smi" ]; then kill "$smi"; wait "$smi" 2>/dev/null || true; fi
}

run memory --in-memory
run random_w0 --read random --workers 0
run random_w${WORKERS} --read random --workers "$WORKERS"
run sequential_w0 --read sequential --workers 0
run sequential_w${WORKERS} --read sequential --workers "$WORKERS" --read-streams "$WORKERS"

echo "== summary"
$PY - <<'EOF'
import csv, json, os
from pathlib import Path
out = Path(os.environ["OUT"])
compute = json.loads((out / "compute.json").read_text())["clips_per_s"]
rows = []
for run in sorted(p for p in out.iterdir() if p.is_dir() and (p / "metrics.jsonl").is_file()):
    train = [json.loads(x) for x in (run / "metrics.jsonl").open()]
    train = [r for r in train if r.get("kind") == "train"]
    by_epoch = {}
    for r in train:  # the last logged row of an epoch has the whole epoch's rate
        by_epoch[r["epoch"]] = r["clips_per_s"]
    util = None
    smi = out / f"{run.name}.smi.csv"
    if smi.is_file() and smi.stat().st_size:
        samples = [float(r[1]) for r in csv.reader(smi.open()) if len(r) > 1 and r[1].strip()]
        util = sum(samples) / len(samples) if samples else None  # the whole run: start-up, epochs, eval, saves
    seconds = float((out / f"{run.name}.end").read_text()) - float((out / f"{run.name}.start").read_text())
    epochs = [by_epoch[e] for e in sorted(by_epoch)]
    last = epochs[-1] if epochs else 0.0
    rows.append({"run": run.name, "epoch_clips_per_s": epochs, "vs_compute_last_epoch": last / compute,
                 "gpu_util_mean_pct": util, "wall_s": seconds,
                 "bound": "compute" if last >= 0.8 * compute else "loader"})
result = {"compute_only_clips_per_s": compute, "runs": rows,
          "setting": {k: os.environ[k] for k in ("VIDEOS", "FRAMES", "DIM", "T", "EPOCHS", "BATCH", "DEVICE", "WORKERS")}}
(out / "gpu_train.json").write_text(json.dumps(result, indent=1))
print(f"compute only: {compute:.0f} clips/s")
print("| run | clips/s per epoch | last epoch / compute only | GPU util (mean over the run) | wall s | bound |")
print("|---|---|---:|---:|---:|---|")
for r in rows:
    util = "-" if r["gpu_util_mean_pct"] is None else f"{r['gpu_util_mean_pct']:.0f} %"
    print(f"| {r['run']} | {', '.join(f'{c:.0f}' for c in r['epoch_clips_per_s'])} | "
          f"{r['vs_compute_last_epoch']:.2f} | {util} | {r['wall_s']:.0f} | {r['bound']} |")
print(f"wrote {out / 'gpu_train.json'}")
EOF
