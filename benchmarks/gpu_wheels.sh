#!/usr/bin/env bash
# Wheels for a GPU machine that cannot reach a package index but has python3 with torch, timm, typer, rich,
# safetensors (this workplace's H200 image): what vivitcache needs beyond that, for Python 3.12, into .whl/
# (git-ignored locally). Then carry .whl to that machine and run `bash benchmarks/gpu_extract.sh`, which installs
# them with --no-index. torchcodec is left out: it needs FFmpeg's shared libraries, which such a machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  av==18.1.0 zarr==3.1.6 numcodecs==0.16.6 donfig google-crc32c dask==2026.8.0 distributed==2026.8.0 tornado zict \
  tblib partd locket scikit-video==1.1.11
du -sh .whl
