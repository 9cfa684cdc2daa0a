# Two entry points, both starting from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A second environment with Colab's notebook packages (issue #12), for `make test-colab`.
COLAB_VENV ?= .venv-colab
COLAB_BIN := $(COLAB_VENV)/bin
PINS := -c constraints.txt -c constraints-colab.txt
# The files holding tests marked `colab` (pyproject's markers), and the notebooks (their
# conftest marks quickstart.ipynb): the modules left out need packages .venv-colab lacks.
COLAB_TESTS = $(shell grep -l "mark.colab" tests/test_*.py) notebooks

.PHONY: setup setup-colab demo demo-script test test-colab lint clean

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

$(COLAB_BIN)/python:
	@echo "nbaccel: creating the virtual environment $(COLAB_VENV) (Colab's notebook packages)"
	$(PYTHON) -m venv $(COLAB_VENV)
	$(COLAB_BIN)/python -m pip install --quiet --upgrade pip

# As on Colab: its packages first, then nbaccel and the test runners on top, which the
# constraints forbid to change any of them; check_pins.py proves that none changed.
$(COLAB_VENV)/.installed: $(COLAB_BIN)/python pyproject.toml constraints.txt constraints-colab.txt scripts/check_pins.py
	@echo "nbaccel: installing Colab's packages into $(COLAB_VENV): ipywidgets 7.7.1,"
	@echo "         ipykernel 6.17.1, IPython 7.34.0, plotly 5.24.1 (constraints-colab.txt), torch"
	@echo "         and torchvision (constraints.txt); then nbaccel with pytest, nbval, nbclient and"
	@echo "         nbformat, which may not change any of them (a minute; pip prints only errors)"
	$(COLAB_BIN)/python -m pip install --quiet $(PINS) -r constraints-colab.txt -r constraints.txt
	$(COLAB_BIN)/python -m pip install --quiet $(PINS) -e ".[test-notebook]"
	@echo "nbaccel: the pinned versions in $(COLAB_VENV):"
	$(COLAB_BIN)/python scripts/check_pins.py constraints.txt constraints-colab.txt
	touch $@

setup-colab: $(COLAB_VENV)/.installed

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

# The whole suite, then the tests marked `colab` again on Colab's package versions.
test: lint setup-colab
	$(BIN)/python -m pytest
	@$(MAKE) --no-print-directory test-colab

test-colab: setup-colab
	@echo "nbaccel: the tests marked colab, in $(COLAB_VENV) (Colab's package versions)"
	$(COLAB_BIN)/python -m pytest -m colab $(COLAB_TESTS)

clean:
	rm -rf $(VENV) $(COLAB_VENV) .pytest_cache build *.egg-info
