"""Shared test set-up.

- Hypothesis: no per-example deadline and no "too slow" health check. The suite runs on two
  cores beside real servers and load generators; timing checks would only add flakiness,
  while the properties themselves stay as strict.
- ``needs_compiled(module)`` (``toolchain.needs_native``, ``needs_loadgen``): a test that
  needs a compiled module fails where it is missing, unless the run says ``MIDGRAM_NATIVE=0``.
- The fixtures many test modules share: ``folder`` (a private short folder), ``sockets``
  (real datagram sockets, closed at teardown), ``native`` (the compiled ``_batchio``),
  ``midgram`` and ``midgram_udp`` (a served midgram, one per test module).

The helpers they share are modules beside this one, never a test module: ``servers`` (a
served midgram, ``RawClient``), ``datagrams`` (sockets, queues, waiting with a deadline),
``kamailio``, ``exporters``, ``interrupts``, ``strategies``, ``golden_cases``, ``toolchain``.
No test picks a "free" port beforehand: servers bind port 0 and say which port they took
(``servers.ANY_UDP``); a port where nobody answers is held (``Sockets.unanswered``). Only
Kamailio, which cannot bind port 0, is started again on other ports when one was taken.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from datagrams import Sockets
from hypothesis import HealthCheck, settings
from servers import ANY_UDP, ServerProcess, midgram_server, short_tmpdir
from toolchain import missing, pure_python_run

#: ``midgram serve``'s flags for the ``midgram`` fixtures: two workers, the tests' app.
SERVED = ("--children", "2", "--app", "apps:mi")

settings.register_profile("midgram", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("midgram")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_compiled"):
        why = missing(mark.args[0])
        if why is None:
            continue
        if pure_python_run():
            pytest.skip(f"{why} (MIDGRAM_NATIVE=0 run)")
        pytest.fail(
            f"{why}. `make test` builds it; a run with MIDGRAM_NATIVE=0 tests without it.",
            pytrace=False,
        )


@pytest.fixture
def folder() -> Iterator[Path]:
    """A private folder with a short path, removed afterwards: a UNIX socket's path is at
    most 107 bytes, which pytest's ``tmp_path`` can exceed."""
    path = Path(short_tmpdir())
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sockets(folder: Path) -> Iterator[Sockets]:
    """Real datagram sockets (their files in ``folder``), every one closed at teardown."""
    opened = Sockets(folder)
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def native() -> ModuleType:
    """The compiled module itself (tests using it are marked needs_native)."""
    return importlib.import_module("midgram.server._batchio")


@pytest.fixture(scope="module")
def midgram() -> Iterator[ServerProcess]:
    """A served midgram for the module's tests (``SERVED``), on a UNIX socket."""
    with midgram_server(*SERVED) as running:
        yield running


@pytest.fixture(scope="module")
def midgram_udp() -> Iterator[ServerProcess]:
    """The same on UDP, on the port the kernel chose (``servers.ANY_UDP``)."""
    with midgram_server(*SERVED, socket=ANY_UDP) as running:
        yield running
