# Two entry points: `make run` and `make test`. Both build their own venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.example.toml
STAMP := $(VENV)/.installed

.PHONY: run test venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

run: venv
	$(BIN)/gateway --config $(CONFIG) serve

test: venv
	./scripts/test-deps.sh
	$(BIN)/python scripts/audit.py  # known advisories for the pinned dependencies (offline: the committed snapshot)
	$(BIN)/python -m pytest -n $${PYTEST_WORKERS:-4} -p no:cacheprovider -rfEs --durations=15 $(PYTEST_ARGS)

bench: venv
	$(BIN)/python bench/smtp_ingest.py
	$(BIN)/python bench/queue.py

clean:
	rm -rf $(VENV) var
