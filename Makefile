# Every target creates or reuses the virtual environment in .venv, so nothing depends on
# what was installed by hand.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-slow bench bench-gpu bench-quality clean

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
	cd benchmarks && for b in bench_vs_captum bench_vs_training bench_scaling bench_memory bench_projection bench_projection_dense bench_precision; do \
	  $(abspath $(PY)) $$b.py || exit 1; done
	$(PY) benchmarks/mislabel.py --seeds 5 --archs cnn mlp
	OMP_NUM_THREADS=1 $(PY) benchmarks/target.py --seeds 10 --scenarios vision
	OMP_NUM_THREADS=1 $(PY) benchmarks/lds.py

# CUDA throughput (ResNet-18, fp32/TF32/bf16, exact/projected), the CIFAR-10 extrapolation and the gpu tests.
bench-gpu: $(STAMP)
	$(PY) benchmarks/gpu.py --json benchmarks/results/gpu.json

# Mislabel quality matrix at its default size (ResNet-18 imagefolder + digits MLP/CNN, uniform and
# class-pair noise and clean twins; design seed 0, then held-out seed 100; table in benchmarks/RESULTS.md).
bench-quality: $(STAMP)
	$(PY) -m pip install -q -e ".[test,bench]"
	OMP_NUM_THREADS=1 $(PY) benchmarks/matrix.py --seeds 0 --out benchmarks/results/matrix_design.json
	OMP_NUM_THREADS=1 $(PY) benchmarks/matrix.py --seeds 100 --out benchmarks/results/matrix_heldout.json

clean:
	rm -rf runs .pytest_cache
