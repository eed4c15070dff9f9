"""Run the fuzz targets (fuzz/targets.py) under atheris, coverage-guided (libFuzzer).

    python fuzz/run.py                       # every target, 60 s each
    python fuzz/run.py native --seconds 600  # one target, longer
    python fuzz/run.py --runs 2000 --seed 1  # a short, repeatable run (make test)
    python fuzz/run.py --replay DIR...       # the targets over files, no fuzzing (make sanitize)

The seed corpus is written afresh for each run: the golden requests (tests/golden/), the
hostile inputs of issue 15 (tests/test_hostile*.py) and the golden replies for the client.
New inputs the fuzzer finds go to fuzz/corpus/TARGET/ (not in git), and a crash to
fuzz/crashes/ with the input that caused it. Each target runs in its own process, as
libFuzzer ends the process when it is done. Exit status: 0 when no target failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]

TARGETS = ("datagram", "native", "reply")
MAX_LEN = 65457  # the server's buffer: the largest request it reads
_STAT_RE = re.compile(r"^stat::(\w+):\s*(\S+)", re.MULTILINE)


def seeds(target: str) -> list[bytes]:
    """The starting inputs: real requests (or replies, for the client) and the poison."""
    golden = ROOT / "tests" / "golden"
    if target == "reply":
        import test_hostile_client as hostile

        found = [path.read_bytes() for path in sorted(golden.glob("*/unix/*.rsp"))]
        found += [reply.replace(b"{id}", b"1") for reply in hostile.DEEP_REPLIES.values()]
        found.append(hostile.result_reply(hostile.HOSTILE))
        return found
    import test_hostile as hostile

    found = [path.read_bytes() for path in sorted(golden.glob("*/unix/*.req"))]
    found += [data for data, _ in hostile.POISON.values()]
    found += [
        b'{"jsonrpc":"2.0","method":"add","params":{"a":"12","b":"1.5","c":7,"d":"y"},"id":"x"}',
        b'{"jsonrpc":"2.0","method":"items","params":[[1,"2",3.9],["a",1]],"id":2}',
        b'{"jsonrpc":"2.0","method":"echo","params":[{"k":[1,2.5,null,true]}],"id":3}',
        b'{"jsonrpc":"2.0","method":"fail","id":4}',
        b'{"jsonrpc":"2.0","method":"later","params":[1],"id":5}',
        b'{"jsonrpc":"2.0","method":"deep","params":[255],"id":6}',
    ]
    return found


def fuzz_one(target: str, libfuzzer_args: list[str]) -> None:
    """In this process: fuzz ``target`` until libFuzzer is done (it exits)."""
    import atheris

    logging.disable(logging.CRITICAL)  # handler failures are expected, by the thousand
    with atheris.instrument_imports(include=["midgram", "targets"]):
        import targets

    module = targets.batchio() if target == "native" else None
    check = getattr(targets.Targets(module), target)
    atheris.Setup([sys.argv[0], *libfuzzer_args], check)
    atheris.Fuzz()


def replay(paths: list[Path]) -> int:
    """Every target over every file (and the seeds): no fuzzing, for instrumented builds."""
    import targets

    logging.disable(logging.CRITICAL)
    checks = targets.Targets(targets.batchio())
    files = [p for path in paths for p in (sorted(path.rglob("*")) if path.is_dir() else [path])]
    inputs = [p.read_bytes() for p in files if p.is_file()]
    count = 0
    for target in TARGETS:
        for data in [*seeds(target), *inputs]:
            getattr(checks, target)(data)
            count += 1
    print(f"replayed {count} inputs ({len(inputs)} files) over {', '.join(TARGETS)}: no failure")
    return 0


def main() -> int:
    if sys.argv[1:2] == ["--one"]:  # the child process of run_target
        fuzz_one(sys.argv[2], sys.argv[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=", ".join(TARGETS))
    parser.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    parser.add_argument("--runs", type=int, help="inputs per target, instead of --seconds")
    parser.add_argument("--seed", type=int, default=0, help="libFuzzer's seed (0: random)")
    parser.add_argument("--replay", type=Path, nargs="+", help="run these files, no fuzzing")
    parser.add_argument(
        "--corpus", type=Path, default=HERE / "corpus", help="kept inputs (default fuzz/corpus)"
    )
    args = parser.parse_args()
    if unknown := set(args.targets) - set(TARGETS):
        parser.error(f"unknown target(s) {sorted(unknown)}: use {', '.join(TARGETS)}")
    if args.replay:
        return replay(args.replay)
    failed = 0
    for target in args.targets or TARGETS:
        failed += run_target(target, args)
    return 1 if failed else 0


def run_target(target: str, args: argparse.Namespace) -> int:
    corpus = args.corpus / target
    crashes = HERE / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(exist_ok=True)
    limit = f"-runs={args.runs}" if args.runs else f"-max_total_time={args.seconds}"
    with tempfile.TemporaryDirectory(prefix=f"midgram-fuzz-{target}-") as seed_dir:
        for index, data in enumerate(seeds(target)):
            Path(seed_dir, f"seed-{index:04d}").write_bytes(data)
        command = [
            sys.executable,
            __file__,
            "--one",
            target,
            limit,
            f"-seed={args.seed}",
            f"-max_len={MAX_LEN}",
            "-rss_limit_mb=4096",
            "-timeout=10",
            "-print_final_stats=1",
            f"-artifact_prefix={crashes}/{target}-",
            str(corpus),
            seed_dir,
        ]
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    stats = _final_stats(done.stderr)
    print(
        f"{target}: {'ok' if done.returncode == 0 else 'FAILED'} in {elapsed:.0f} s, "
        f"{stats.get('stat::number_of_executed_units', '?')} inputs "
        f"({stats.get('stat::average_exec_per_sec', '?')}/s), "
        f"corpus {len(os.listdir(corpus))} files, coverage {_coverage(done.stderr)}"
    )
    if done.returncode != 0:
        print(done.stderr[-6000:], file=sys.stderr)
    return int(done.returncode != 0)


def _final_stats(log: str) -> dict[str, str]:
    return {f"stat::{name}": value for name, value in _STAT_RE.findall(log)}


def _coverage(log: str) -> str:
    """The last 'cov: N ft: M' libFuzzer printed (edges and features covered)."""
    for line in reversed(log.splitlines()):
        if "cov:" in line and "ft:" in line:
            words = line.split()
            cov, ft = words[words.index("cov:") + 1], words[words.index("ft:") + 1]
            return f"{cov} edges, {ft} features"
    return "?"


if __name__ == "__main__":
    sys.exit(main())
