# The two commands of the README. Each does its own set-up (tools/setup_env.sh, run once).
PY := .venv/bin/python

.PHONY: setup main test lint bench
setup:
	@bash tools/setup_env.sh

main: setup
	$(PY) hub_scripts/train.py $(ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) benchmarks/bench_model.py
	$(PY) benchmarks/bench_retrieval.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_search.py
	$(PY) benchmarks/bench_stream.py
	$(PY) benchmarks/bench_speed.py
