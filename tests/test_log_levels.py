"""The one table of log levels (``midgram.logs.LOG_LEVELS``) and what is read from it: the
values ``log_level`` accepts, OpenSIPS's levels both ways, and the journal's priorities."""

from __future__ import annotations

import logging

import pytest

from midgram.logs import (
    DEFAULT_LOG_LEVEL,
    LOG_LEVELS,
    find_log_level,
    logging_level,
    opensips_level,
    opensips_to_logging,
    syslog_priority,
)

#: OpenSIPS's dprint.h, and what each level shows of Python's.
OPENSIPS = {
    -3: logging.CRITICAL,  # L_ALERT
    -2: logging.CRITICAL,  # L_CRIT
    -1: logging.ERROR,  # L_ERR
    0: logging.ERROR,
    1: logging.WARNING,  # L_WARN
    2: logging.INFO,  # L_NOTICE
    3: logging.INFO,  # L_INFO
    4: logging.DEBUG,  # L_DBG
}


@pytest.mark.parametrize(("level", "number"), sorted(OPENSIPS.items()))
def test_each_opensips_level_folds_onto_a_python_one(level: int, number: int) -> None:
    assert opensips_to_logging(level) == number
    found = find_log_level(level)
    assert found is not None
    assert found.number == number


def test_opensips_takes_any_integer() -> None:
    assert opensips_to_logging(-100) == logging.CRITICAL
    assert opensips_to_logging(100) == logging.DEBUG
    assert find_log_level(5) is None  # but log_level = 5 is refused, naming the range


def test_the_level_reported_is_the_highest_that_folds_onto_it() -> None:
    reported = {row.name: opensips_level(row.number) for row in LOG_LEVELS}
    assert reported == {"critical": -2, "error": 0, "warning": 1, "info": 3, "debug": 4}
    assert opensips_level(logging.INFO + 5) == DEFAULT_LOG_LEVEL.opensips_level == 3


def test_names_are_pythons_and_opensips() -> None:
    for name, python in [
        ("debug", "debug"),
        ("dbg", "debug"),
        ("notice", "info"),
        ("crit", "critical"),
        ("alert", "critical"),
        ("err", "error"),
        ("warn", "warning"),
    ]:
        found = find_log_level(name)
        assert found is not None
        assert found.name == python
        assert logging_level(python) == getattr(logging, python.upper())


def test_journal_priorities_follow_the_levels() -> None:
    assert [syslog_priority(n) for n in (5, 10, 20, 25, 30, 40, 50, 60)] == [7, 7, 6, 6, 4, 3, 2, 2]
