"""midgram.native: the build cache of the C code midgram compiles on first use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from toolchain import needs_cc

from midgram import loadtest, native
from midgram.errors import BuildError, LoadgenError
from midgram.native import cache_dir, compile_c, load_extension


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "midgram"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    assert cache_dir() == tmp_path / "home" / ".cache" / "midgram"


def test_no_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-cc"))
    with pytest.raises(LoadgenError, match=r"generator needs a C compiler .*install gcc"):
        loadtest.build_loadgen(directory=tmp_path)
    with pytest.raises(BuildError, match=r"_batchio module needs a C compiler \(.*/no-cc\)"):
        load_extension("_batchio", directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


@needs_cc
def test_binaries_are_keyed_by_source_and_compiler(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = tmp_path / "prog.c"
    source.write_text("int main(void) { return 0; }\n")
    first = compile_c(source, tmp_path / "out")
    assert first.name.startswith("prog-")
    assert subprocess.run([first], check=False).returncode == 0
    built = first.stat().st_mtime_ns
    assert compile_c(source, tmp_path / "out") == first  # cached: not built again
    assert first.stat().st_mtime_ns == built
    assert compile_c(source, tmp_path / "out", flags=["-DX"]) != first  # other flags
    monkeypatch.setenv("CC", f"{native.compiler()[0]} -DOTHER")
    assert compile_c(source, tmp_path / "out") != first  # another compiler line
    monkeypatch.delenv("CC")
    source.write_text("int main(void) { return 3; }\n")  # an upgrade
    second = compile_c(source, tmp_path / "out")
    assert second != first
    assert subprocess.run([second], check=False).returncode == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == []


@needs_cc
def test_a_compile_error_is_a_build_error(tmp_path: Path) -> None:
    source = tmp_path / "broken.c"
    source.write_text("int main(void) { return }\n")
    with pytest.raises(BuildError, match=r"failed on broken\.c"):
        compile_c(source, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["broken.c"]  # no half-built file left


@needs_cc
def test_the_batchio_module_builds_once_and_loads_in_a_fresh_process(tmp_path: Path) -> None:
    module = load_extension("_batchio", directory=tmp_path)
    assert module.__name__ == "midgram._batchio"
    built = [p for p in tmp_path.iterdir() if p.name.startswith("_batchio-")]
    assert len(built) == 1
    assert built[0].name.endswith(".so")
    mtime = built[0].stat().st_mtime_ns
    # Another process (a later server start) finds it in the cache and does not rebuild.
    code = (
        "import sys; from pathlib import Path; from midgram.native import load_extension;"
        "m = load_extension('_batchio', directory=Path(sys.argv[1])); print(m.MAX_SLOTS)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(module.MAX_SLOTS)
    assert built[0].stat().st_mtime_ns == mtime


def test_missing_python_headers_are_said_plainly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(native.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    with pytest.raises(BuildError, match=r"needs Python's C headers .*apt-get install python3-dev"):
        load_extension("_batchio", directory=tmp_path)
