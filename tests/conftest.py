"""Shared test set-up.

- Hypothesis: no per-example deadline and no "too slow" health check. The suite runs on two
  cores beside real servers and load generators; timing checks would only add flakiness,
  while the properties themselves stay as strict.
- ``needs_compiled(module)`` (``toolchain.needs_native``, ``needs_loadgen``): a test that
  needs a compiled module fails where it is missing, unless the run says ``MIDGRAM_NATIVE=0``.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from toolchain import missing, pure_python_run

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
