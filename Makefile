# The README's two commands: `make demo` and `make test`. Both set up .venv first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test test-fast bench lint clean postgres

# Creates the virtual environment when missing and (re)installs when pyproject.toml changes.
# torch is pinned in the same pip command: an unpinned resolve pulls a multi-GB CUDA build.
.venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.0" -e '.[dev]'
	touch $(STAMP)

demo: .venv
	$(VENV)/bin/reliscale run jobs/icl_smoke.yaml --progress-every 30
	@echo
	@echo "Refit with other options:  $(VENV)/bin/reliscale fit --experiment icl_smoke --tracking-uri sqlite:///$(abspath studies/icl_smoke/mlflow.db) --metric eval/id/mse --form chinchilla --bootstrap 200"

test: .venv postgres
	$(VENV)/bin/pytest -q --durations=30

test-fast: .venv
	$(VENV)/bin/pytest -q -m "not slow"

# The tracking-server tests start their own PostgreSQL; install it from Debian packages when missing.
postgres:
	@test -n "$(wildcard /usr/lib/postgresql/*/bin/initdb)" || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }

bench: .venv
	$(PY) bench/bench_data.py
	$(PY) bench/bench_tokenize.py
	$(PY) bench/bench_lm_eval.py
	$(PY) bench/bench_images.py
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) bench/bench_fit.py
	$(PY) bench/bench_optimizer.py
	$(PY) bench/bench_step.py
	$(PY) bench/bench_memory.py
	$(PY) bench/bench_platform.py
	$(PY) bench/bench_loop.py
	$(PY) bench/bench_mfu.py --sizes S4,S5,S6 --seq-len 256 --steps 4 --warmup 1 --precision bf16,fp32

lint: .venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf studies .pytest_cache
