PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test demo bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) scripts/reproduce_seed.py --preset demo

bench: setup
	$(PY) scripts/reproduce_seed.py --preset dominant
	$(PY) scripts/reproduce_seed.py --preset single-class

lint: setup
	$(VENV)/bin/ruff check swarmnode consensus scripts tests
	$(VENV)/bin/mypy swarmnode/learning swarmnode/aggregation

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
