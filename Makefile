# Two entry points, both starting from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo demo-script test lint clean

$(BIN)/python:
	@echo "nbaccel: creating the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The stamp re-runs the install whenever the declared dependencies change.
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	@echo "nbaccel: installing nbaccel with torch, timm, JupyterLab and the test tools into"
	@echo "         $(VENV) (a few minutes on a fresh machine; pip prints only errors)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	@echo "nbaccel: installed"
	touch $@

setup: $(VENV)/.installed

# JupyterLab starts the notebook's kernel itself (no "Select Kernel" dialog on a first
# start, when the kernel list can come late): binder/overrides.json, in this venv's settings.
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings

# Opens the quickstart notebook in JupyterLab (offline: the bundled digits, no downloads),
# on a copy in build/demo/: what the demo writes (outputs, digits0-4.pth) stays out of git.
# A copy already there is kept, with your edits (rm -rf build/demo for fresh ones).
demo: setup
	mkdir -p $(LAB_SETTINGS) build/demo
	cp binder/overrides.json $(LAB_SETTINGS)/overrides.json
	for f in notebooks/*.ipynb; do [ -e build/demo/$$(basename $$f) ] || cp $$f build/demo/; done
	$(BIN)/jupyter lab build/demo/quickstart.ipynb --ServerApp.allow_root=True

# The same training from a plain script, printing the events.
demo-script: setup
	$(BIN)/python scripts/demo.py

lint: setup
	$(BIN)/ruff check nbaccel tests scripts
	$(BIN)/ruff format --check nbaccel tests scripts

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
