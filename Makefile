# Two commands do all setup on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# torch/torchvision pinned to a pair that works together (see README "Install").
TORCH   := torch==2.14.1 torchvision==0.29.1

.PHONY: test demo install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Offline demo on CPU: synth → stage 1 (8 frames, end to end) → extract (Dask, 2 workers) → stage 2 (32 frames) → eval.
TINY := --model vit-ti --img-size 32 --patch-size 8 --spatial-depth 2 --temporal-depth 2
demo: $(STAMP)
	rm -rf demo_out
	$(BIN)/vivitcache synth demo_out/data
	$(BIN)/vivitcache pretrain --data demo_out/data/labels.csv $(TINY) --frames 8 --epochs 6 --out demo_out/stage1
	$(BIN)/vivitcache extract --data demo_out/data/labels.csv --checkpoint demo_out/stage1 --store demo_out/tokens.zarr --workers 2
	$(BIN)/vivitcache verify demo_out/tokens.zarr
	$(BIN)/vivitcache info demo_out/tokens.zarr
	$(BIN)/vivitcache train --store demo_out/tokens.zarr --init demo_out/stage1 --frames 32 --epochs 10 --out demo_out/stage2
	$(BIN)/vivitcache eval --store demo_out/tokens.zarr --checkpoint demo_out/stage2 --eval-views 2
	@echo "demo done: run folders and curves under demo_out/ (stage1/, stage2/, tokens.zarr)"

clean:
	rm -rf $(VENV) demo_out .pytest_cache
