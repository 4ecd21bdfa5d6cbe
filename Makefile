# `make demo` and `make test` both create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test tasks train-tasks bench-tasks clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) train_toy.py
	$(PY) bench.py toy

# The real-task pipeline (train_task.py, then bench.py task): E2E and SQL with every method, DialogSum with SS.
# Long sequences (SQL, DialogSum) get fewer fine-tuning steps so that training stays near one hour on 2 cores.
THREADS ?= 2
train-tasks: $(STAMP)
	$(PY) train_task.py --task e2e --threads $(THREADS)
	$(PY) train_task.py --task sql --ft-steps 400 --threads $(THREADS)
	$(PY) train_task.py --task dialogsum --method ss --ft-steps 300 --threads $(THREADS)

bench-tasks: $(STAMP)
	$(PY) bench.py task --task e2e
	$(PY) bench.py task --task sql
	$(PY) bench.py task --task dialogsum --methods ss

tasks: train-tasks bench-tasks

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) checkpoints
