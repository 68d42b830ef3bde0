# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if missing
# and install the project with the pinned versions of constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.keras_convx-installed
BACKENDS ?= tensorflow jax torch
EPOCHS ?= 8
OUT ?= demo_out
BACKEND ?= jax
JOBS ?= 2
SPLITS ?= 2

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[backends,dev,export]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m keras_convx.demo --backend $(BACKEND) --epochs $(EPOCHS) --out $(OUT)

test: $(STAMP)
	KERAS_CONVX_REQUIRE_EXTRAS=1 $(PY) tools/run_matrix.py --backends $(BACKENDS) --jobs $(JOBS) --splits $(SPLITS) $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run.py $(BENCH_ARGS)
	# E4 and log-polar as images and widths grow, compiled the way `fit` does by default
	$(PY) benchmarks/size_sweep.py --backends jax tensorflow torch --no-jit --sizes 32 64 128 \
		--channels 32 64 128 --memory --out benchmarks/_raw/size_sweep $(SWEEP_ARGS)
	# the same with the layer's input gradient, as inside a network (a 1x1 Conv2D before it)
	$(PY) benchmarks/size_sweep.py --backends jax tensorflow torch --no-jit --sizes 32 64 128 \
		--channels 32 64 128 --input-gradient --out benchmarks/_raw/size_sweep_input_gradient $(SWEEP_ARGS)

clean:
	rm -rf $(VENV) demo_out guide_out .pytest_cache
