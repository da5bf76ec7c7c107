# Every target creates or reuses the virtual environment in .venv, so nothing depends on
# what was installed by hand.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-slow bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/influence-cli demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Speed and quality benchmarks (minutes; results and commands in benchmarks/RESULTS.md).
bench: $(STAMP)
	$(PY) -m pip install -q -e ".[test,bench]"
	cd benchmarks && for b in bench_vs_captum bench_vs_training bench_scaling bench_projection bench_precision; do \
	  $(abspath $(PY)) $$b.py || exit 1; done
	$(PY) benchmarks/mislabel.py --seeds 5 --archs cnn mlp
	OMP_NUM_THREADS=1 $(PY) benchmarks/target.py --seeds 10 --scenarios vision

clean:
	rm -rf runs .pytest_cache
