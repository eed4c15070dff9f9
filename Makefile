# The two commands a newcomer runs: `make run` and `make test`.
# Each bootstraps .venv by itself on a fresh machine (Python >= 3.11 and make are all it needs).
#
# Every package comes at the exact version constraints.txt names: the test and lint tools and
# everything they pull in, pip itself and the build backend (setuptools) included, so `make
# test` gives the same verdict on a fresh machine today and in six months. `make lock`
# re-resolves it at the newest versions (then run `make test` and commit both).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

# Through the environment they reach every pip run, and the isolated environments in which
# pip and `python -m build` build midgram (PIP_BUILD_CONSTRAINT: pip >= 25.3).
export PIP_CONSTRAINT       := $(CURDIR)/constraints.txt
export PIP_BUILD_CONSTRAINT := $(CURDIR)/constraints.txt

# What the compiled modules are built from: a change re-installs, so re-builds, them.
NATIVE_SOURCES := setup.py $(wildcard src/midgram/*/*.c src/midgram/*/*.h)

.PHONY: run test lint typecheck pytest bench wheel-check lock fuzz sanitize soak clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "midgram needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)

# pip at its pinned version (the dependency groups below need pip >= 25.1).
$(VENV)/.pip: constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	touch $@

# Re-install when the metadata, the pins or the C change; the stamp files keep repeated runs
# fast. The editable install builds the compiled modules in place (src/midgram/*/*.so).
$(VENV)/.installed: pyproject.toml constraints.txt $(NATIVE_SOURCES) $(VENV)/.pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt $(NATIVE_SOURCES) $(VENV)/.pip
	$(BIN)/python -m pip install -q -e . --group dev
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/midgram serve $(ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench tools fuzz
	$(BIN)/ruff format --check src tests bench tools fuzz
	$(BIN)/lint-imports

# mypy --strict, and stubtest: the .pyi stubs of the compiled modules match what was built.
typecheck: $(VENV)/.installed-test
	$(BIN)/mypy --strict src
	$(BIN)/python -m mypy.stubtest midgram.server._batchio midgram.client._loadgen

pytest: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# The wheel a release would ship, built from the sdist, installed into a fresh venv and run
# where no compiler can be found (tools/wheel_check.py says what it checks).
wheel-check: $(VENV)/.installed-test
	$(BIN)/python tools/wheel_check.py

# The benchmark suite against its references (a few minutes; BENCH_ARGS="--help" lists options).
bench: $(VENV)/.installed-test
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/python -m pip install -q --group bench
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# constraints.txt anew: every group's tools, midgram's dependencies and extras, pip and
# setuptools, resolved now at their newest versions, in a scratch venv (not constrained).
lock: | $(BIN)/python
	rm -rf $(VENV)-lock
	$(PYTHON) -m venv $(VENV)-lock
	PIP_CONSTRAINT=/dev/null PIP_BUILD_CONSTRAINT=/dev/null $(VENV)-lock/bin/python -m pip install -q --upgrade pip setuptools
	PIP_CONSTRAINT=/dev/null PIP_BUILD_CONSTRAINT=/dev/null $(VENV)-lock/bin/python -m pip install -q -e '.[yaml,exporter,proctitle]' --group dev --group bench
	{ echo "# Exact versions of every package the Makefile installs (written by make lock)."; \
	  $(VENV)-lock/bin/python -m pip freeze --all --exclude-editable; } > constraints.txt
	rm -rf $(VENV)-lock

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
		src/midgram/server/_batchio.c -o $(SANITIZE_DIR)/_batchio.so
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1 \
		UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		MIDGRAM_BATCHIO=$(SANITIZE_DIR)/_batchio.so $(BIN)/python fuzz/sanitize.py

# A forked server under a long mixed load (bench/soak.py): RSS and open files must stay flat.
SOAK_REQUESTS ?= 1000000
soak: $(VENV)/.installed-test
	$(BIN)/python bench/soak.py --requests $(SOAK_REQUESTS) $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build fuzz/corpus src/*.egg-info src/midgram/*/*.so
