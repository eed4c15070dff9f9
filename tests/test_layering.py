"""Architecture rules that code review alone would let slip (the layers themselves are
import-linter contracts in pyproject.toml, run by `make lint`)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "midgram"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_library_never_prints() -> None:
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).parts[0] in {"cli", "__main__.py"}:
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


#: What compiling C or loading a shared object by its path would take (issue 15: a module
#: loaded from a user-writable cache ran that user's code as root).
RUN_TIME_BUILD = {
    "cffi",
    "sysconfig",
    "spec_from_file_location",
    "ExtensionFileLoader",
    "LoadLibrary",
    "find_library",
}
#: ctypes may reach the symbols the process already has (``CDLL(None)``: libc's prctl for
#: the workers' parent-death signal), never a library by its path.
_CTYPES_LOADERS = {"CDLL", "PyDLL", "WinDLL", "OleDLL"}


def test_nothing_is_compiled_or_loaded_by_path_at_run_time() -> None:
    """The compiled modules are built at install time and imported from the package like any
    module (test_native checks it in use); no code of the package compiles or dlopens."""
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = imported_modules(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.ImportFrom):
                names.update(alias.name for alias in node.names)
        assert not names & RUN_TIME_BUILD, f"{path.relative_to(SRC)}: {names & RUN_TIME_BUILD}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _called_name(node) in _CTYPES_LOADERS:
                first = node.args[0] if node.args else None
                loads_self = isinstance(first, ast.Constant) and first.value is None
                assert loads_self, f"{path.relative_to(SRC)}:{node.lineno} loads a library by path"


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return call.func.id if isinstance(call.func, ast.Name) else None
