"""``make soak``: a forked ``midgram serve`` under a long mixed load; memory and open files
must stay flat, and the same workers must serve from start to end.

Rounds of the C load generator (``midgram.client.loadtest``) alternate requests of several kinds:
bare calls (the C fast path), calls with params, errors, and a poison of issue 15 (a float
id with params nested 1000 deep); between rounds a Python client sends every hostile datagram
of tests/test_hostile.py. After each round the supervisor's and each worker's RSS (VmRSS) and
open file descriptors are read from /proc. The first rounds warm up (caches, the batch
buffers' pages); from then on, growth beyond ``--rss-slack`` or any new descriptor fails.

    python bench/soak.py --requests 2000000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

from servers import RawClient, midgram_server  # noqa: E402
from test_hostile import POISON, nested  # noqa: E402

from midgram.client.loadtest import process_tree, run_once  # noqa: E402

KINDS = {
    "uptime (bare)": '{"jsonrpc":"2.0","method":"uptime","id":%ID%}',
    "which with params": '{"jsonrpc":"2.0","method":"which","params":["ps"],"id":%ID%}',
    "get_statistics": (
        '{"jsonrpc":"2.0","method":"get_statistics","params":{"statistics":["mi_datagram:"]},'
        '"id":%ID%}'
    ),
    "unknown method": '{"jsonrpc":"2.0","method":"nope","id":%ID%}',
    "poison: params 1000 deep": (
        '{"jsonrpc":"2.0","method":"uptime","params":' + nested(1000).decode() + ',"id":%ID%}'
    ),
}
WARMUP_ROUNDS = len(KINDS)  # one round of each kind: every path warmed up


def sample(pids: list[int]) -> dict[int, tuple[int, int]]:
    """pid -> (RSS in kB, open descriptors)."""
    found = {}
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        found[pid] = (rss, len(os.listdir(f"/proc/{pid}/fd")))
    return found


def send_poison(target: str) -> int:
    with RawClient(target) as client:
        for data, expected in POISON.values():
            if expected is None:
                client.send(data)
            else:
                assert client.exchange(data) is not None, data[:60]
    return len(POISON)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--round", type=float, default=3.0, help="seconds a round")
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--rss-slack", type=int, default=2048, help="kB a process may grow")
    args = parser.parse_args()
    with midgram_server("--children", str(args.children), "--app", "apps:mi") as server:
        supervisor = server.proc.pid
        tree = process_tree(supervisor)
        workers = server.worker_pids()
        print(f"server pid {supervisor}, workers {workers}, {len(tree)} processes")
        total = poison = rounds = 0
        baseline: dict[int, tuple[int, int]] = {}
        started = time.monotonic()
        while total < args.requests:
            name = list(KINDS)[rounds % len(KINDS)]
            result = run_once(
                server.target, KINDS[name], inflight=args.inflight, duration=args.round,
                warmup=0.2, pids=tree,
            )  # fmt: skip
            total += result.sent
            poison += send_poison(server.target)
            rounds += 1
            now = sample(tree)
            if rounds == WARMUP_ROUNDS:
                baseline = now
            shown = "  ".join(f"{pid}: {rss} kB {fds} fd" for pid, (rss, fds) in now.items())
            print(
                f"round {rounds:3d} {name:26s} {result.sent:8d} sent {result.rps:8.0f}/s "
                f"{result.timeouts} timeouts | total {total:9d} | {shown}",
                flush=True,
            )
        elapsed = time.monotonic() - started
        same_workers = server.worker_pids() == workers
        final = sample(tree)
    failures = []
    for pid, (rss, fds) in final.items():
        base_rss, base_fds = baseline.get(pid, (rss, fds))
        print(
            f"pid {pid}: RSS {base_rss} -> {rss} kB ({rss - base_rss:+d}), fds {base_fds} -> {fds}"
        )
        if rss - base_rss > args.rss_slack:
            failures.append(f"pid {pid} grew {rss - base_rss} kB")
        if fds != base_fds:
            failures.append(f"pid {pid} has {fds - base_fds:+d} descriptors")
    if not same_workers:
        failures.append("the workers changed")
    print(
        f"soak: {total} requests and {poison} hostile datagrams in {elapsed:.0f} s "
        f"({rounds} rounds), same workers: {same_workers}: "
        + ("; ".join(failures) if failures else "flat")
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
