"""A short run of the fuzz targets (fuzz/targets.py), seeded with the golden requests and the
hostile inputs of issue 15: a few seconds of coverage-guided inputs with a fixed seed, into a
fresh corpus, so that it is the same run every time. ``make fuzz`` runs them for longer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from servers import ROOT
from toolchain import needs_native

pytest.importorskip("atheris", reason="the fuzzer (atheris) is not installed")


@needs_native  # the native target needs the C module
def test_a_short_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    runner = str(ROOT / "fuzz" / "run.py")
    done = subprocess.run(
        [sys.executable, runner, "--runs", "1500", "--seed", "1", "--corpus", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    for target in ("datagram", "native", "reply"):
        assert f"{target}: ok" in done.stdout
