# Two commands do all setup on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# torch/torchvision pinned to a pair that works together (see README "Install").
TORCH   := torch==2.14.1 torchvision==0.29.1

.PHONY: test demo install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/vivitcache demo --out demo_out

bench: $(STAMP)
	$(BIN)/vivitcache bench --out bench_out

clean:
	rm -rf $(VENV) demo_out bench_out .pytest_cache
