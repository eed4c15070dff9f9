"""The package's face: ``dir(midgram)`` lists the public API, every error is reachable from
``midgram`` (as httpx's are), and importing it, or the client CLI, loads nothing it does not
need (``midgram call``'s cold start)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import midgram
from midgram import config, errors


def test_dir_lists_the_public_names_and_nothing_else() -> None:
    assert dir(midgram) == sorted(midgram.__all__)
    for helper in ("Any", "TYPE_CHECKING", "importlib", "_LAZY"):
        assert helper not in dir(midgram)
    for name in midgram.__all__:
        assert getattr(midgram, name) is not None, name


def test_every_error_is_reachable_from_the_package() -> None:
    assert set(errors.__all__) <= set(midgram.__all__)
    for name in errors.__all__:
        error = getattr(midgram, name)
        assert error is getattr(errors, name)
        assert issubclass(error, midgram.MidgramError)
        assert f"{error.__module__}.{error.__qualname__}" == f"midgram.{name}"


def test_a_client_error_is_caught_as_the_package_names_it() -> None:
    with pytest.raises(midgram.ClientError) as caught:
        raise errors.ReplyTimeout("/x.sock", 1.5)
    assert repr(caught.type) == "<class 'midgram.ReplyTimeout'>"


def _loaded_after(statement: str) -> set[str]:
    """The midgram modules a fresh interpreter has loaded after ``statement``."""
    script = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    return {name for name in json.loads(done.stdout) if name.startswith("midgram")}


def test_importing_the_package_loads_neither_client_nor_server() -> None:
    loaded = _loaded_after("import midgram")
    assert loaded == {"midgram", "midgram._version", "midgram.errors"}


def test_the_client_cli_loads_no_server_engine_or_config() -> None:
    loaded = _loaded_after("import midgram.cli.call")
    heavy = ("midgram.server", "midgram.engine", "midgram.config", "midgram.monitoring")
    assert not {name for name in loaded if name.startswith(heavy)}


def test_the_lazy_names_load_on_first_use() -> None:
    loaded = _loaded_after("import midgram\nmidgram.Settings")
    assert "midgram.config.settings" in loaded
    assert not {name for name in loaded if name.startswith("midgram.server")}


#: What ``midgram.config`` exported when it was one module (0.1): users' imports keep working.
CONFIG_NAMES_OF_0_1 = (
    "ALIASES",
    "PARAMETERS",
    "SECTION",
    "ConfigFile",
    "OpensipsCfg",
    "Parameter",
    "Settings",
    "default_socket_name",
    "load_settings",
    "load_toml",
    "merge",
    "parse_bwlist",
    "parse_opensips_cfg",
    "read_config",
)


def test_midgram_config_still_exports_what_it_did() -> None:
    for name in CONFIG_NAMES_OF_0_1:
        assert name in config.__all__, name
        assert getattr(config, name) is not None, name
