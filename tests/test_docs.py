"""docs/ against the code: the layer picture is the import-linter contract, the module
table names the modules that exist, every one of them, and the deliberate differences have
one numbering (docs/compatibility.md and the README's list)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()
SRC = ROOT / "src" / "midgram"
_EDGE = re.compile(r"^\s*([\w\s&]+?)\s*-->\s*([\w\s&]+?)\s*$")
_NODE = re.compile(r'^\s*(\w+)\["([^"]*)"\]\s*$')


def _contract_layers() -> list[set[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    (layers,) = [
        c["layers"] for c in contracts if c["type"] == "layers" and c["layers"][0] == "midgram.cli"
    ]
    return [{name.strip().removeprefix("midgram.") for name in row.split("|")} for row in layers]


def _picture() -> str:
    block = ARCHITECTURE.split("<!-- layers:start", 1)[1].split("<!-- layers:end -->", 1)[0]
    return block.split("```mermaid", 1)[1].split("```", 1)[0]


def _picture_rows() -> tuple[list[set[str]], dict[str, str]]:
    """The picture's rows, top down (a node's row: the longest way down to it), and labels."""
    labels: dict[str, str] = {}
    below: dict[str, set[str]] = {}
    for line in _picture().splitlines():
        if node := _NODE.match(line):
            labels[node.group(1)] = node.group(2)
        elif edge := _EDGE.match(line):
            for upper in edge.group(1).split("&"):
                below.setdefault(upper.strip(), set()).update(
                    lower.strip() for lower in edge.group(2).split("&")
                )
    depth = dict.fromkeys(labels, 0)
    for _ in labels:  # longest paths, relaxed as often as there are nodes
        for upper, lowers in below.items():
            for lower in lowers:
                depth[lower] = max(depth[lower], depth[upper] + 1)
    rows = [{n for n, d in depth.items() if d == row} for row in range(max(depth.values()) + 1)]
    return rows, labels


def test_the_layer_picture_is_the_contract() -> None:
    rows, labels = _picture_rows()
    contract = _contract_layers()
    *upper, base = contract
    assert rows[:-1] == upper
    assert rows[-1] == {"base"}
    named = {name.strip() for name in labels["base"].split(":", 1)[1].split(",")}
    assert named == base


def test_the_module_table_names_every_module() -> None:
    table = ARCHITECTURE.split("| layer | modules | what |", 1)[1].split("\n\n", 1)[0]
    listed: set[Path] = set()
    for row in table.splitlines()[2:]:
        layer, modules = (cell.strip() for cell in row.strip("|").split("|")[:2])
        folder = SRC / layer.strip("`").rstrip("/") if layer.endswith("/`") else SRC
        names = re.findall(r"`([\w.]+)`", modules) or [layer.strip("`")]
        for name in names:
            path = folder / (name if name.endswith((".py", ".c")) else f"{name}.py")
            assert path.exists(), f"{layer}: no {path.relative_to(ROOT)}"
            listed.add(path)
    present = {
        path
        for path in [*SRC.rglob("*.py"), *SRC.rglob("*.c")]
        if path.name not in {"__init__.py", "__main__.py"} and "__pycache__" not in path.parts
    }
    assert present - listed == set(), "modules docs/architecture.md does not list"


# --- one numbering of the deliberate differences -----------------------------------------

_NUMBERED = re.compile(r"^(\d+)\. ", re.MULTILINE)


def _numbers(text: str, start: str, end: str) -> list[int]:
    section = text.split(start, 1)[1].split(end, 1)[0]
    return [int(number) for number in _NUMBERED.findall(section)]


def test_the_readme_lists_every_difference_by_its_number() -> None:
    """The README's list and docs/compatibility.md's numbered differences are one numbering:
    1 to N in order, none skipped or doubled (two branches once both took 22)."""
    compatibility = (ROOT / "docs" / "compatibility.md").read_text()
    explained = _numbers(compatibility, "## The contract", "## Request validation")
    assert explained == list(range(1, len(explained) + 1))
    readme = (ROOT / "README.md").read_text()
    assert _numbers(readme, "## Compatibility", "\n## ") == explained
