"""Architecture rules that code review alone would let slip."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "midgram"
SANS_IO = ["protocol", "commands", "address", "config", "rpc", "hep", "tracing"]
FORBIDDEN = {"socket", "os", "select", "signal", "threading", "time", "asyncio", "subprocess"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", SANS_IO)
def test_sans_io_modules_do_no_io(module: str) -> None:
    path = SRC / f"{module}.py"
    assert not imported_modules(path) & FORBIDDEN


def test_library_never_prints() -> None:
    for path in SRC.glob("*.py"):
        if path.name in {"cli.py", "__main__.py"}:
            continue
        tree = ast.parse(path.read_text())
        calls = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"print", "exit", "quit"}
        ]
        assert not calls, f"{path.name} prints or exits"
