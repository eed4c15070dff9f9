"""Tests of midgram.engine.stats: declarations, kinds, lifecycle, queries, and real forked
processes."""

from __future__ import annotations

import functools
import json
import os
import traceback
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from midgram.engine.stats import Counter, FunctionStat, Gauge, Stat, Statistics

# -- helpers ------------------------------------------------------------------------------------

ChildResult = int | list[int] | None


def fork_child(body: Callable[[], ChildResult]) -> int:
    """Fork; the child runs ``body`` and reports its result (JSON) on a pipe. Returns the pid."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            payload = json.dumps(body())
            code = 0
        except BaseException:
            payload = traceback.format_exc()
        finally:
            os.write(write_end, payload.encode())
            os._exit(code)
    os.close(write_end)
    _PIPES[pid] = read_end
    return pid


_PIPES: dict[int, int] = {}


def join_child(pid: int) -> ChildResult:
    """Wait for a child from fork_child; fail with its traceback if it failed."""
    with os.fdopen(_PIPES.pop(pid), "rb") as pipe:
        payload = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, payload
    result: ChildResult = json.loads(payload)
    return result


def in_child(body: Callable[[], ChildResult]) -> ChildResult:
    """Run ``body`` in a forked child and return what it returned."""
    return join_child(fork_child(body))


@pytest.fixture
def stats() -> Statistics:
    return Statistics()


# -- names --------------------------------------------------------------------------------------

part = st.text(min_size=1, max_size=12).filter(lambda s: ":" not in s)


@given(group=part, short=part)
def test_valid_names_split_into_group_and_short(group: str, short: str) -> None:
    stats = Statistics()
    stat = stats.counter(f"{group}:{short}")
    assert (stat.group, stat.short, stat.name) == (group, short, f"{group}:{short}")


@pytest.mark.parametrize("name", ["", ":", "core", "core:", ":rcv", "a:b:c", "a::b", "::"])
def test_bad_names_are_refused(stats: Statistics, name: str) -> None:
    with pytest.raises(ValueError, match="bad statistic name"):
        stats.counter(name)
    with pytest.raises(ValueError, match="bad statistic name"):
        stats.function(name, lambda: 0)
    assert len(stats) == 0


@given(name=st.text(max_size=12).filter(lambda s: s.count(":") != 1 or s[0] == ":" or s[-1] == ":"))
def test_any_name_without_exactly_two_nonempty_parts_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="bad statistic name"):
        Statistics().gauge(name)


def test_declaring_again_returns_the_same_stat(stats: Statistics) -> None:
    counter = stats.counter("calls:total")
    gauge = stats.gauge("calls:active")
    function = stats.function("core:uptime", lambda: 1)
    assert stats.counter("calls:total") is counter
    assert stats.gauge("calls:active") is gauge
    assert stats.function("core:uptime", lambda: 2) is function
    assert function.value == 1  # the first declaration's function is kept
    assert len(stats) == 3


def test_names_are_case_insensitive_and_groups_keep_their_first_spelling(
    stats: Statistics,
) -> None:
    active = stats.gauge("calls:active")
    assert stats.gauge("CALLS:Active") is active
    later = stats.counter("Calls:Total")
    assert later.group == "calls"
    assert later.name == "calls:Total"
    assert stats.groups() == ["calls"]


@pytest.mark.parametrize(
    ("first", "second"),
    [("counter", "gauge"), ("gauge", "counter"), ("counter", "function"), ("function", "gauge")],
)
def test_declaring_a_name_with_another_kind_is_refused(
    stats: Statistics, first: str, second: str
) -> None:
    declare: dict[str, Callable[[str], Stat]] = {
        "counter": stats.counter,
        "gauge": stats.gauge,
        "function": lambda name: stats.function(name, lambda: 0),
    }
    declare[first]("calls:x")
    with pytest.raises(ValueError, match="already declared as a"):
        declare[second]("CALLS:X")


def test_function_must_be_callable(stats: Statistics) -> None:
    with pytest.raises(TypeError, match="not callable"):
        stats.function("core:x", 5)  # type: ignore[arg-type]


# -- kinds --------------------------------------------------------------------------------------


def test_counter_counts_and_resets(stats: Statistics) -> None:
    counter = stats.counter("mi_datagram:received")
    assert isinstance(counter, Counter)
    assert counter.incremental
    assert counter.value == 0
    counter.inc()
    counter.inc(41)
    assert counter.value == 42
    counter.reset()
    assert counter.value == 0
    counter.inc(n=3)
    assert counter.value == 3


def test_gauge_moves_both_ways_and_is_never_reset(stats: Statistics) -> None:
    gauge = stats.gauge("calls:active")
    assert isinstance(gauge, Gauge)
    assert not gauge.incremental
    gauge.add(5)
    gauge.sub(2)
    gauge.add()
    gauge.sub()
    assert gauge.value == 3
    gauge.reset()  # OpenSIPS: STAT_NO_RESET
    assert gauge.value == 3
    gauge.set(10)
    assert gauge.value == 10
    gauge.set(-4)
    assert gauge.value == -4


def test_function_stat_is_computed_at_each_read(stats: Statistics) -> None:
    calls: list[int] = []

    def uptime() -> int:
        calls.append(1)
        return len(calls)

    stat = stats.function("core:uptime", uptime)
    assert isinstance(stat, FunctionStat)
    assert not stat.incremental
    assert (stat.value, stat.value) == (1, 2)
    stat.reset()
    assert stat.value == 3

    def almost_three() -> float:
        return 2.9

    rounded = stats.function("core:rounded", almost_three, incremental=True)  # type: ignore[arg-type]
    assert rounded.value == 2  # int(), as OpenSIPS casts to an integer
    assert rounded.incremental


def test_a_kept_reference_to_inc_follows_allocate_and_attach(stats: Statistics) -> None:
    counter = stats.counter("core:requests")
    gauge = stats.gauge("core:load")
    inc, add = counter.inc, gauge.add
    inc()
    add(2)
    stats.allocate(2)
    inc()
    add(2)
    stats.attach(1)
    inc()
    add(2)
    assert (counter.value, gauge.value) == (3, 6)


def test_repr_names_the_kind_and_the_stat(stats: Statistics) -> None:
    assert repr(stats.counter("a:b")) == "Counter('a:b')"
    assert repr(stats.function("a:c", lambda: 0)) == "FunctionStat('a:c')"


operation = st.one_of(
    st.tuples(st.just("inc"), st.integers(-1000, 1000)),
    st.tuples(st.just("add"), st.integers(-1000, 1000)),
    st.tuples(st.just("sub"), st.integers(-1000, 1000)),
    st.tuples(st.just("set"), st.integers(-(10**9), 10**9)),
    st.tuples(st.just("reset"), st.just(0)),
    st.tuples(st.just("allocate"), st.integers(1, 4)),
    st.tuples(st.just("attach"), st.integers(0, 3)),
)


@given(ops=st.lists(operation, max_size=40))
def test_values_follow_a_simple_model_through_any_lifecycle(ops: list[tuple[str, int]]) -> None:
    stats = Statistics()
    counter, gauge = stats.counter("m:c"), stats.gauge("m:g")
    model = {"c": 0, "g": 0}
    for op, n in ops:
        if op == "inc":
            counter.inc(n)
            model["c"] += n
        elif op in ("add", "sub"):
            getattr(gauge, op)(n)
            model["g"] += n if op == "add" else -n
        elif op == "set":
            gauge.set(n)
            model["g"] = n
        elif op == "reset":
            stats.reset_all()
            model["c"] = 0
        elif op == "allocate" and stats.slots is None:
            stats.allocate(n)
        elif op == "attach" and stats.slots is not None and n < stats.slots:
            stats.attach(n)
        assert (counter.value, gauge.value) == (model["c"], model["g"])


# -- lifecycle ----------------------------------------------------------------------------------


def test_values_counted_before_allocate_are_kept(stats: Statistics) -> None:
    counter = stats.counter("core:a")
    gauge = stats.gauge("core:b")
    counter.inc(7)
    counter.reset()
    counter.inc(2)
    gauge.set(5)
    stats.allocate(3)
    assert (counter.value, gauge.value) == (2, 5)
    counter.reset()
    assert counter.value == 0


def test_allocate_is_idempotent_for_the_same_slots(stats: Statistics) -> None:
    counter = stats.counter("core:a")
    assert stats.slots is None
    stats.allocate(2)
    counter.inc()
    stats.allocate(2)
    assert counter.value == 1
    assert stats.slots == 2
    with pytest.raises(RuntimeError, match="already allocated for 2 slots, not 3"):
        stats.allocate(3)


@pytest.mark.parametrize("slots", [0, -1])
def test_allocate_needs_a_slot(stats: Statistics, slots: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        stats.allocate(slots)


def test_allocate_works_without_any_counter(stats: Statistics) -> None:
    stats.function("core:x", lambda: 4)
    stats.allocate(1)
    stats.attach(0)
    assert [s.value for s in stats] == [4]


def test_declaring_after_allocate_is_refused(stats: Statistics) -> None:
    counter = stats.counter("core:a")
    stats.allocate(1)
    for declare in (
        stats.counter,
        stats.gauge,
        lambda name: stats.function(name, lambda: 0),
    ):
        with pytest.raises(RuntimeError, match=r"^declare statistics before the server starts"):
            declare("core:new")
    assert stats.counter("CORE:A") is counter  # an existing one is only looked up
    assert "core:new" not in stats


def test_attach_needs_allocate_and_a_slot_in_range(stats: Statistics) -> None:
    stats.counter("core:a")
    with pytest.raises(RuntimeError, match="call allocate"):
        stats.attach(0)
    stats.allocate(2)
    for slot in (-1, 2):
        with pytest.raises(ValueError, match=r"out of range 0\.\.1"):
            stats.attach(slot)
    assert stats.slot is None
    stats.attach(1)
    assert stats.slot == 1


# -- queries ------------------------------------------------------------------------------------


@pytest.fixture
def declared(stats: Statistics) -> Statistics:
    """core:a, net:x, core:B, tm:x, core:up (function), in that order of declaration."""
    stats.counter("core:a")
    stats.gauge("net:x")
    stats.counter("core:B")
    stats.counter("tm:x")
    stats.function("core:up", lambda: 9)
    return stats


def names(found: list[Stat]) -> list[str]:
    return [stat.name for stat in found]


def test_iteration_is_grouped_in_declaration_order(declared: Statistics) -> None:
    assert names(list(declared)) == ["core:a", "core:B", "core:up", "net:x", "tm:x"]
    assert declared.groups() == ["core", "net", "tm"]
    assert len(declared) == 5


def test_get_takes_a_full_name(declared: Statistics) -> None:
    b = declared.get("CORE:b")
    assert b is not None
    assert b.name == "core:B"
    assert declared.get("b") is None
    assert declared.get("core:") is None
    assert declared.get("core:a:x") is None
    assert "core:up" in declared
    assert 5 not in declared


def test_find_is_opensips_get_stat(declared: Statistics) -> None:
    found = declared.find("X")
    assert found is not None
    assert found.name == "net:x"  # the first declared of net:x and tm:x
    assert declared.find("core:a") is None


def test_select_all(declared: Statistics) -> None:
    assert names(declared.select(["all"])) == names(list(declared))
    assert names(declared.select(["nothing", "all", "core:"])) == names(list(declared))


def test_select_all_is_lowercase_only_and_optional(declared: Statistics) -> None:
    assert declared.select(["ALL"]) == []
    assert declared.select(["all"], allow_all=False) == []
    all_stat = declared.counter("misc:all")
    assert declared.select(["all"], allow_all=False) == [all_stat]


def test_select_group(declared: Statistics) -> None:
    assert names(declared.select(["core:"])) == ["core:a", "core:B", "core:up"]
    assert names(declared.select(["TM:"])) == ["tm:x"]
    assert declared.select(["nope:", ":", "core::"]) == []


def test_select_bare_name_is_case_insensitive(declared: Statistics) -> None:
    assert names(declared.select(["b"])) == ["core:B"]
    assert names(declared.select(["UP"])) == ["core:up"]
    assert names(declared.select(["x"])) == ["net:x"]


def test_select_group_and_name_form_matches_nothing(declared: Statistics) -> None:
    assert declared.select(["core:a"]) == []
    assert declared.select(["core:a", "a"]) == [declared.get("core:a")]


def test_select_is_in_declaration_order_without_duplicates(declared: Statistics) -> None:
    found = declared.select(["x", "tm:", "up", "core:", "a", "A"])
    assert names(found) == ["core:a", "core:B", "core:up", "net:x", "tm:x"]
    assert declared.select([]) == []


def test_select_refuses_a_single_string(declared: Statistics) -> None:
    with pytest.raises(TypeError, match="not a single str"):
        declared.select("all")


@given(short=part, spelling=st.sampled_from([str.lower, str.upper, str.swapcase]))
def test_select_finds_a_name_in_any_case(short: str, spelling: Callable[[str], str]) -> None:
    stats = Statistics()
    stat = stats.counter(f"g:{short}")
    if spelling(short).lower() == short.lower():  # some characters have no simple case pair
        assert stats.select([spelling(short)]) == [stat]


def test_reset_all_resets_only_counters(declared: Statistics) -> None:
    for stat in declared:
        if isinstance(stat, Counter):
            stat.inc(3)
        elif isinstance(stat, Gauge):
            stat.add(4)
    declared.reset_all()
    assert {s.name: s.value for s in declared} == {
        "core:a": 0,
        "core:B": 0,
        "core:up": 9,
        "net:x": 4,
        "tm:x": 0,
    }


# -- real processes -----------------------------------------------------------------------------


def test_children_write_their_own_slots_concurrently_and_the_parent_sees_the_sum(
    stats: Statistics,
) -> None:
    counter = stats.counter("mi_datagram:received")
    gauge = stats.gauge("calls:active")
    counter.inc(5)
    stats.allocate(4)
    per_child = 20_000

    def worker(slot: int) -> None:
        stats.attach(slot)
        inc, add = counter.inc, gauge.add
        for _ in range(per_child * (slot + 1)):
            inc()
        add(slot)

    pids = [fork_child(functools.partial(worker, slot)) for slot in range(4)]
    for _ in range(1000):  # the parent keeps counting in its own row meanwhile
        counter.inc()
    for pid in pids:
        join_child(pid)
    assert counter.value == 5 + 1000 + per_child * (1 + 2 + 3 + 4)
    assert gauge.value == 0 + 1 + 2 + 3


def test_a_reset_in_a_child_is_seen_by_the_parent(stats: Statistics) -> None:
    counter = stats.counter("core:requests")
    stats.allocate(2)
    counter.inc(10)

    def child() -> int:
        stats.attach(0)
        counter.inc(5)
        counter.reset()
        counter.inc(2)
        return counter.value

    assert in_child(child) == 2
    assert counter.value == 2
    counter.inc()
    assert counter.value == 3


def test_a_gauge_set_in_a_child_is_the_value_everywhere(stats: Statistics) -> None:
    gauge = stats.gauge("calls:active")
    stats.allocate(2)
    gauge.add(7)

    def child() -> None:
        stats.attach(1)
        gauge.add(3)
        gauge.set(4)

    in_child(child)
    assert gauge.value == 4


def test_a_respawned_child_reusing_a_slot_keeps_its_counts(stats: Statistics) -> None:
    counter = stats.counter("core:requests")
    stats.allocate(2)

    def first_life() -> None:
        stats.attach(1)
        counter.inc(5)

    def second_life() -> int:
        stats.attach(1)
        counter.inc(3)
        return counter.value

    in_child(first_life)
    assert in_child(second_life) == 8
    assert counter.value == 8


def test_function_stats_run_in_the_reading_process(stats: Statistics) -> None:
    pid_stat = stats.function("core:pid", os.getpid)
    stats.allocate(1)

    def child() -> list[int]:
        return [os.getpid(), pid_stat.value]

    child_pid, child_read = in_child(child)  # type: ignore[misc]
    assert child_read == child_pid
    assert pid_stat.value == os.getpid()


def test_a_child_that_does_not_attach_shares_the_row_without_clobbering(
    stats: Statistics,
) -> None:
    counter = stats.counter("core:requests")
    stats.allocate(1)
    counter.inc(10)

    def child() -> int:
        counter.inc(100)
        return counter.value

    assert in_child(child) == 110
    counter.inc()  # the parent must not write back its cached 10 + 1
    assert counter.value == 111


def test_declarations_are_visible_in_children_only_after_allocate(stats: Statistics) -> None:
    counter = stats.counter("core:requests")

    def child() -> int:
        counter.inc(100)  # private: allocate() was not called before the fork
        return counter.value

    assert in_child(child) == 100
    assert counter.value == 0
