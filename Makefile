# The two commands a newcomer runs: `make run` and `make test`.
# Each bootstraps .venv by itself on a fresh machine (Python >= 3.11 and make are all it needs).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint typecheck pytest bench fuzz sanitize soak clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "midgram needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install when pyproject.toml changes; the stamp files keep repeated runs fast.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/midgram serve $(ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench fuzz
	$(BIN)/ruff format --check src tests bench fuzz

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy --strict src

pytest: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# The benchmark suite against its references (a few minutes; BENCH_ARGS="--help" lists options).
bench: $(VENV)/.installed-test
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# The fuzz targets (fuzz/targets.py) under atheris, coverage-guided; FUZZ_ARGS="--help".
# make test runs them briefly (tests/test_fuzz.py); this runs each for FUZZ_SECONDS.
FUZZ_SECONDS ?= 300
fuzz: $(VENV)/.installed-test
	$(BIN)/python fuzz/run.py --seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

# The C module built with AddressSanitizer and UBSan, running the fuzz corpus, FastAnswer
# against answer and BatchSocket.serve on real datagrams (fuzz/sanitize.py). Built here,
# by itself, with gcc; libasan must be loaded first (LD_PRELOAD), and Python's own
# allocations are not ours to report (detect_leaks=0).
SANITIZE_DIR := build/sanitize
SANITIZE_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
	-fno-sanitize-recover=all -shared -fPIC -Wall -Wextra -Werror
sanitize: $(VENV)/.installed-test
	mkdir -p $(SANITIZE_DIR)
	gcc $(SANITIZE_FLAGS) -I"$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
		src/midgram/_batchio.c -o $(SANITIZE_DIR)/_batchio.so
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1 \
		UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		MIDGRAM_BATCHIO=$(SANITIZE_DIR)/_batchio.so $(BIN)/python fuzz/sanitize.py

# A forked server under a long mixed load (bench/soak.py): RSS and open files must stay flat.
SOAK_REQUESTS ?= 1000000
soak: $(VENV)/.installed-test
	$(BIN)/python bench/soak.py --requests $(SOAK_REQUESTS) $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build fuzz/corpus
