# detrforge: `make demo` runs the whole loop on this machine, `make test` is what CI runs.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: venv demo test test-fast lint serve clean

venv: $(VENV)/.installed

# infra/install.sh is the one install step: the container image (infra/Dockerfile) runs it too.
$(VENV)/.installed: pyproject.toml infra/install.sh
	PYTHON=$(PYTHON) bash infra/install.sh $(VENV) dev
	touch $@

demo: venv
	VENV=$(VENV) bash infra/demo.sh

serve: venv
	$(VENV)/bin/detrforge serve

# Two pytest-xdist workers (one per core here), each with its own Ray head: the heavy tests wait
# on jobs much of the time, and the other worker's tests fill that time.
PYTEST_WORKERS ?= 2

test: venv
	$(PY) -m pytest -q -ra --durations=15 -n $(PYTEST_WORKERS) --dist loadgroup

test-fast: venv
	$(PY) -m pytest -q -m "not ray and not slow" -n $(PYTEST_WORKERS)

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy src

clean:
	rm -rf .detrforge demo-data
