# Both targets create .venv when it is missing. TORCH is what pip installs for torch:
# the CPU wheel by default; with a GPU, `make demo TORCH=torch` (or install your own
# CUDA build into .venv first).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo

.PHONY: demo test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,ray,hf,tensorboard,wandb]"
	touch $@

demo: venv
	$(VENV)/bin/superlens demo --out $(OUT)

test: venv
	$(PY) -m pytest -n auto --dist loadgroup

clean:
	rm -rf $(VENV) runs
