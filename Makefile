# Two entry points for a fresh machine: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast assets clean

setup: $(STAMP)

# torch first, pinned: here it is the local CPU wheel; any looser spec pulls CUDA builds.
# open_clip_torch only supplies the CLIP BPE vocabulary; --no-deps keeps torchvision out
# (a CUDA torchvision breaks `import transformers` on a CPU torch).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps open_clip_torch
	@echo "(open_clip_torch's own needs, timm and torchvision, are left out on purpose: only its CLIP vocabulary is used)"
	$(PY) -m pip install -q --no-warn-conflicts -e ".[test,lora,xray,anomaly]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/diffmine demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Retrains the shipped tiny model from scratch on the embedded dataset (see README);
# `make assets RECIPE=broad` follows assets/tiny-broad-recipe.json instead (the broad small base).
RECIPE ?= towns
assets: $(STAMP)
	$(VENV)/bin/diffmine assets --out assets --recipe $(RECIPE)

clean:
	rm -rf $(VENV) runs
