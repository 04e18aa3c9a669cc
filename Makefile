# ssm-unet-bench: `make setup` then `make test`. `make demo` runs the main job on synthetic data.
VENV ?= .venv
PY := $(VENV)/bin/python
BENCH := $(VENV)/bin/bench
DEMO_RESULTS ?= results/demo
# per user: `make smoke` empties it and `make baseline` commits what it holds, so another user must not
# be able to have made it (a shared name in /tmp could be theirs, filled with their rows)
SMOKE_RESULTS ?= /tmp/ssm-unet-bench-smoke-$(shell id -u)
# the drift grid's models: `make baseline MODELS=mynet` runs and adds one model's rows, the others kept
MODELS ?= all
# one torch thread per process: 2 shared cores make op-heavy loops collapse otherwise,
# and a fixed thread count keeps CPU runs bit-reproducible
export OMP_NUM_THREADS ?= 1

.PHONY: setup test demo smoke check baseline bench-hd95 bench-scan bench-patches clean

setup:
	bash scripts/setup.sh

# tests in TEST_WORKERS processes (pytest-xdist), one torch thread each: the 2-core CI machine
# finishes in about half the time; TEST_WORKERS=0 runs them in this process. The slowest 15 are
# listed at the end: where CI's time goes
TEST_WORKERS ?= 2
# PYTHONWARNDEFAULTENCODING: a text file opened without encoding= fails its test (pyproject's filterwarnings)
test:
	PYTHONWARNDEFAULTENCODING=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15

demo:
	$(BENCH) run --models all --dataset synapse --synthetic --protocol smoke --results $(DEMO_RESULTS) --threads 1
	$(BENCH) report --results $(DEMO_RESULTS)
	$(BENCH) report --results $(DEMO_RESULTS) --reference unet --published --out $(DEMO_RESULTS)/report.md

# the CI smoke grid: fixed seed and threads, compared with the committed baseline
smoke:
	rm -rf $(SMOKE_RESULTS)
	BENCH=$(BENCH) bash scripts/smoke_grid.sh $(SMOKE_RESULTS) $(MODELS)

check: smoke
	$(BENCH) check --baseline results/baseline/smoke.csv --results $(SMOKE_RESULTS) --models $(MODELS)

baseline: smoke
	$(BENCH) check --baseline results/baseline/smoke.csv --results $(SMOKE_RESULTS) --models $(MODELS) --update

bench-hd95:
	$(PY) benchmarks/hd95_bench.py

bench-scan:
	$(PY) benchmarks/scan_bench.py

bench-patches:
	$(PY) benchmarks/patch_bench.py --out benchmarks/patch_bench.md

clean:
	rm -rf $(DEMO_RESULTS) $(SMOKE_RESULTS)
