# Two commands do all setup on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# torch/torchvision (and torchcodec, built against that torch) pinned to versions that work together (README "Install").
TORCH   := torch==2.14.1 torchvision==0.29.1 torchcodec==0.17.0

.PHONY: test demo install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH) -e ".[dev,torchcodec,bench]"
	@# torchcodec's tests need FFmpeg's shared libraries: installed here when we may (root + apt), else they skip.
	-@ldconfig -p | grep -q libavcodec || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ffmpeg >/dev/null; } || \
		echo "no FFmpeg shared libraries: torchcodec tests will be skipped (apt-get install ffmpeg)"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Offline demo on CPU: synth → image checkpoint → stage 1 (8 frames, end to end) → extract (Dask, 2 workers) → stage 2 (32 frames) → eval → demo_out/report.md.
demo: $(STAMP)
	$(BIN)/vivitcache demo --out demo_out --overwrite

clean:
	rm -rf $(VENV) demo_out .pytest_cache
