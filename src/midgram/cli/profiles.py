"""Named targets: a profile names one server or a fleet, so ``-p edge`` replaces a row of
``--target`` flags.

The file is TOML, ``$MIDGRAM_PROFILES`` or ``$XDG_CONFIG_HOME/midgram/profiles.toml``
(``~/.config/midgram/profiles.toml`` by default)::

    [profiles]
    local = "/run/opensips/mi.sock"
    edge = ["udp:10.0.0.1:8080", "udp:10.0.0.2:8080"]
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import click

from midgram.errors import AddressError
from midgram.wire.address import parse_target

__all__ = ["load_profile", "profile_option", "profile_targets", "profiles_file"]

_META_KEY = "midgram.profile"


def profiles_file() -> Path:
    explicit = os.environ.get("MIDGRAM_PROFILES")
    if explicit:
        return Path(explicit)
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home, "midgram", "profiles.toml")


def load_profile(name: str, path: Path | None = None) -> list[str]:
    """The targets a profile names; a usage error that says what is wrong otherwise."""
    path = path or profiles_file()
    try:
        profiles = tomllib.loads(path.read_text()).get("profiles", {})
    except FileNotFoundError:
        raise click.BadParameter(f"no profiles file at {path}", param_hint="--profile") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--profile") from None
    if name not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise click.BadParameter(
            f"no profile {name!r} in {path} (profiles: {known})", param_hint="--profile"
        )
    entry = profiles[name]
    targets = [entry] if isinstance(entry, str) else entry
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise click.BadParameter(
            f"profile {name!r} in {path} must be a target or a list of targets",
            param_hint="--profile",
        )
    try:
        return [str(parse_target(text)) for text in targets]
    except AddressError as exc:
        raise click.BadParameter(f"profile {name!r}: {exc}", param_hint="--profile") from None


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[_META_KEY] = value


profile_option = click.option(
    "-p",
    "--profile",
    envvar="MIDGRAM_PROFILE",
    metavar="NAME",
    expose_value=False,
    callback=_remember,
    help="A named target or fleet from the profiles file "
    "($MIDGRAM_PROFILES, else ~/.config/midgram/profiles.toml).",
)


def profile_targets() -> list[str]:
    """The targets of the profile given to the current command (none without --profile)."""
    ctx = click.get_current_context(silent=True)
    name = ctx.meta.get(_META_KEY) if ctx is not None else None
    return load_profile(name) if name else []
