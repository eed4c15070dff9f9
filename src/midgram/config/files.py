"""The config files that give parameters: TOML, or an existing OpenSIPS's opensips.cfg. Sans-IO.

``read_config`` takes a file's bytes and tells the two apart by content; ``load_toml`` and
``parse_opensips_cfg`` read one kind each. Each gives a layer for ``settings.merge``: raw
values, checked only when ``Settings`` is built from the merged layers.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from midgram.config.settings import PARAMETERS, SECTION, Origin
from midgram.errors import ConfigError, ConfigFileError

__all__ = [
    "ConfigFile",
    "OpensipsCfg",
    "load_toml",
    "parse_opensips_cfg",
    "read_config",
]

# --------------------------------------------------------------------------------------------
# TOML

_TOML_LINE_RE: Final = re.compile(r"at line (\d+)")


def load_toml(text: str, *, source: str | None = None) -> dict[str, object]:
    """The parameters of a TOML document: top-level keys, or the ``[mi_datagram]`` table.

    With a ``[mi_datagram]`` table, other tables are ignored (the file may configure other
    things) but a top-level key is refused, since it would be silently lost. A syntax error
    names ``source`` (the file) when given.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = _toml_line(text, str(exc))
        raise _toml_error(source, line, f"not valid TOML: {exc}", shown=f": {line!r}") from exc
    except ValueError as exc:  # an integer beyond the digits Python reads
        raise _toml_error(source, "", f"not usable TOML: {exc}") from exc
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise _toml_error(source, "", "not usable TOML: nested too deeply") from None
    if SECTION not in data:
        return data
    section = data[SECTION]
    if not isinstance(section, dict):
        raise ConfigError(SECTION, section, f"must be a table: [{SECTION}]")
    for key, value in data.items():
        if key != SECTION and not isinstance(value, dict):
            raise ConfigError(key, value, f"outside the [{SECTION}] table: move it inside")
    return dict(section)


def _toml_error(source: str | None, value: str, reason: str, *, shown: str = "") -> ConfigError:
    """A TOML document that cannot be used: naming the file (``source``) when there is one."""
    if source is not None:
        return ConfigFileError(source, reason + shown)
    return ConfigError("TOML", value, reason)


def _toml_line(text: str, message: str) -> str:
    match = _TOML_LINE_RE.search(message)
    lines = text.splitlines()
    if match and 0 < int(match.group(1)) <= len(lines):
        return lines[int(match.group(1)) - 1].strip()
    return ""


# --------------------------------------------------------------------------------------------
# opensips.cfg

# OpenSIPS's cfg lexer, reduced to what a modparam needs. Order matters: comments and strings
# are taken whole first, so a '#' or ',' inside a string is not mistaken for syntax. A string
# left open runs to the end of the text, as a comment does: trying it again from each of its
# quotes would take quadratic time (OpenSIPS refuses such a file; its modparam is skipped).
_CFG_TOKEN_RE: Final = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>(?:\#|//)[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<dquote>"(?:[^"\\]|\\.)*")
    | (?P<squote>'[^']*')
    | (?P<unclosed>["'].*)
    | (?P<number>0[xX][0-9a-fA-F]+|[0-9]+)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_SKIPPED_TOKENS: Final = frozenset({"space", "comment"})
# Escapes of a double-quoted cfg string (cfg.lex); a backslash-newline joins lines.
_CFG_ESCAPES: Final[Mapping[str, str]] = MappingProxyType(
    {"n": "\n", "r": "\r", "a": "\a", "t": "\t", "\\": "\\", "0": "\0", '"': '"', "\n": ""}
)
_CFG_ESCAPE_RE: Final = re.compile(r"\\(.)", re.DOTALL)
_HEP_ID_RE: Final = re.compile(r"\s*\[([^\]]+)\](.*)", re.DOTALL)
_HEP_MODULE: Final = Origin.PROTO_HEP.value
#: The proto_hep modparams that shape MI traces (besides hep_id, read as destinations).
_HEP_PARAMS: Final = frozenset(
    p.name for p in PARAMETERS if p.origin is Origin.PROTO_HEP and p.name != "hep_id"
)
_INCLUDE_WORDS: Final = frozenset({"include_file", "import_file"})

_Token = tuple[str, str]


@dataclass(frozen=True)
class OpensipsCfg:
    """What ``parse_opensips_cfg`` found in an opensips.cfg.

    ``params``: the ``mi_datagram`` modparams (str or int values, the last one wins).
    ``hep_ids``: the proto_hep ``hep_id`` destinations, name -> spec (``trace_destination``
    names one of them). ``includes``: files the cfg includes, which were not read.
    ``hep_params``: the proto_hep modparams that shape traces (``homer5_on``,
    ``homer5_delim``, ``hep_capture_id``). ``unread``: module patterns of modparams that
    were skipped, being regular expressions beyond what ``_module_matches`` reads.
    """

    params: dict[str, object]
    hep_ids: dict[str, str]
    includes: tuple[str, ...] = ()
    hep_params: dict[str, object] = field(default_factory=dict)
    unread: tuple[str, ...] = ()

    def layer(self) -> dict[str, object]:
        """The settings this file gives, for ``merge``: the mi_datagram modparams, and the
        proto_hep ones that tracing uses."""
        layer = {**self.params, **self.hep_params}
        if self.hep_ids:
            layer["hep_id"] = tuple(f"[{name}]{spec}" for name, spec in self.hep_ids.items())
        return layer

    def warnings(self) -> tuple[str, ...]:
        """Problems OpenSIPS would not report (it silently disables tracing for a missing
        hep_id), and modparams skipped for their module pattern."""
        notes = [
            f"modparam skipped: its module {pattern[:80]!r} is a regular expression beyond "
            "names, '.', '.*' and '|'"
            for pattern in self.unread
        ]
        destination = self.params.get("trace_destination")
        if isinstance(destination, str) and destination not in self.hep_ids:
            notes.append(
                f"trace_destination {destination!r} names no proto_hep hep_id "
                "in this file: OpenSIPS would silently trace nothing"
            )
        return tuple(notes)


def _unescape(body: str) -> str:
    return _CFG_ESCAPE_RE.sub(lambda m: _CFG_ESCAPES.get(m.group(1), m.group(0)), body)


def _cfg_tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    for match in _CFG_TOKEN_RE.finditer(text):
        kind = match.lastgroup or "other"
        if kind not in _SKIPPED_TOKENS:
            tokens.append((kind, match.group()))
    return tokens


# How each kind of string token becomes its value; single-quoted cfg strings have no escapes.
_STRING_DECODERS: Final[Mapping[str, Callable[[str], str]]] = MappingProxyType(
    {"dquote": lambda raw: _unescape(raw[1:-1]), "squote": lambda raw: raw[1:-1]}
)


def _string_at(tokens: list[_Token], at: int) -> str | None:
    if at >= len(tokens):
        return None
    kind, raw = tokens[at]
    decode = _STRING_DECODERS.get(kind)
    return None if decode is None else decode(raw)


def _is_punct(tokens: list[_Token], at: int, char: str) -> bool:
    return at < len(tokens) and tokens[at] == ("other", char)


def _number_value(raw: str) -> int | str:
    """A cfg number's value; beyond the digits Python reads, its text, which the parameter's
    own check then refuses by name."""
    if raw[:2].lower() == "0x":
        return int(raw, 16)
    # A C-style leading zero is octal, as in 0660; "08" is not octal and reads as 8.
    if len(raw) > 1 and raw[0] == "0" and all(c in "01234567" for c in raw):
        return int(raw, 8)
    try:
        return int(raw, 10)
    except ValueError:
        return raw


def _modparam_value(tokens: list[_Token], at: int) -> tuple[str | int | None, int]:
    """Read a modparam's value (a string or a signed number) at ``tokens[at]``."""
    text = _string_at(tokens, at)
    if text is not None:
        return text, at + 1
    sign = 1
    if _is_punct(tokens, at, "-") or _is_punct(tokens, at, "+"):
        sign = -1 if tokens[at][1] == "-" else 1
        at += 1
    if at < len(tokens) and tokens[at][0] == "number":
        number = _number_value(tokens[at][1])
        if isinstance(number, str):
            return ("-" if sign < 0 else "") + number, at + 1
        return sign * number, at + 1
    return None, at


def _modparam_at(tokens: list[_Token], at: int) -> tuple[str, str, str | int] | None:
    """Parse ``( "module" , "name" , value )``: the tokens after the ``modparam`` keyword."""
    if not _is_punct(tokens, at, "("):
        return None
    module = _string_at(tokens, at + 1)
    if module is None or not _is_punct(tokens, at + 2, ","):
        return None
    name = _string_at(tokens, at + 3)
    if name is None or not _is_punct(tokens, at + 4, ","):
        return None
    value, end = _modparam_value(tokens, at + 5)
    if value is None or not _is_punct(tokens, end, ")"):
        return None
    return module, name, value


# A modparam's module is a POSIX ERE (set_mod_param_regex: anchored, case-insensitive), so
# modparam("mi_datagram|mi_fifo", ...) sets both. Python's re backtracks, and a pattern with
# nested quantifiers takes exponential time even on an 11-character name: only names, with
# "." and ".*" wildcards, joined by "|" (maybe in one pair of parentheses) are read, as
# globs (fnmatch never backtracks exponentially). Real files use no more.
_MODULE_GLOB_RE: Final = re.compile(r"(?:[A-Za-z0-9_]|\.\*?)+")


def _module_matches(pattern: str, module: str) -> bool | None:
    """Whether the modparam module ``pattern`` names ``module``; None when the pattern is
    beyond what is read here (see _MODULE_GLOB_RE)."""
    if pattern == module:
        return True
    body = pattern[1:-1] if pattern[:1] == "(" and pattern[-1:] == ")" else pattern
    alternatives = body.split("|")
    if not all(_MODULE_GLOB_RE.fullmatch(alternative) for alternative in alternatives):
        return None
    name = module.lower()
    return any(fnmatch.fnmatchcase(name, _glob(alternative)) for alternative in alternatives)


def _glob(alternative: str) -> str:
    return alternative.lower().replace(".*", "*").replace(".", "?")


def _add_hep_id(hep_ids: dict[str, str], value: str | int) -> None:
    match = _HEP_ID_RE.fullmatch(value) if isinstance(value, str) else None
    if match:
        hep_ids[match.group(1).strip()] = match.group(2).strip()


def parse_opensips_cfg(text: str) -> OpensipsCfg:
    """Extract the ``mi_datagram`` modparams and proto_hep ``hep_id``s from cfg text.

    Comments (``#``, ``//``, ``/* */``), both quote styles, octal and hex numbers and several
    statements on one line are handled; malformed modparams are skipped (OpenSIPS itself
    would refuse the file). ``include_file``/``import_file`` are listed, not followed.
    """
    tokens = _cfg_tokens(text)
    params: dict[str, object] = {}
    hep_ids: dict[str, str] = {}
    hep_params: dict[str, object] = {}
    includes: list[str] = []
    unread: list[str] = []
    for at, (kind, raw) in enumerate(tokens):
        if kind != "word":
            continue
        if raw in _INCLUDE_WORDS:
            included = _string_at(tokens, at + 1)
            if included is not None:
                includes.append(included)
        if raw != "modparam":
            continue
        found = _modparam_at(tokens, at + 1)
        if found is None:
            continue
        module, name, value = found
        ours, hep = _module_matches(module, SECTION), _module_matches(module, _HEP_MODULE)
        if ours is None:
            unread.append(module)
        if ours:
            params[name] = value
        if hep and name == "hep_id":
            _add_hep_id(hep_ids, value)
        elif hep and name in _HEP_PARAMS:
            hep_params[name] = value
    return OpensipsCfg(params, hep_ids, tuple(includes), hep_params, tuple(unread))


# --------------------------------------------------------------------------------------------
# A config file of either kind


@dataclass(frozen=True)
class ConfigFile:
    """What a config file gives: its layer for ``merge``, the format it was read as, and
    warnings for the caller to show."""

    layer: dict[str, object]
    format: str
    warnings: tuple[str, ...] = ()


def _has_modparam(text: str) -> bool:
    """Whether the text holds a ``modparam(`` statement, which no TOML document can."""
    tokens = _cfg_tokens(text)
    return any(
        token == ("word", "modparam") and _is_punct(tokens, at + 1, "(")
        for at, token in enumerate(tokens)
    )


def read_config(data: bytes, name: str) -> ConfigFile:
    """The parameters of the config file ``name`` (its bytes), told apart by content, not by
    name: an opensips.cfg has ``modparam(...)`` statements, which TOML cannot have; anything
    else is TOML. A file that gives no parameter at all is refused (``ConfigFileError``
    naming it): serving the defaults after a config file was given would hide the mistake.

    OpenSIPS reads its cfg as bytes, so a Latin-1 comment there is no error: bytes that are
    not UTF-8 go through as surrogates and back out as the same bytes (a path, say). TOML is
    UTF-8 by definition."""
    text = data.decode(errors="surrogateescape")
    if _has_modparam(text):
        cfg = parse_opensips_cfg(text)
        found = ConfigFile(cfg.layer(), "opensips.cfg", cfg.warnings())
        missing = f'an opensips.cfg without a modparam("{SECTION}", ...) line'
    else:
        try:
            data.decode()
        except UnicodeDecodeError as exc:
            where = f"byte {data[exc.start]:#04x} at offset {exc.start}"
            raise ConfigFileError(name, f"not UTF-8 text ({where}), so not TOML") from None
        try:
            found = ConfigFile(load_toml(text, source=name), "TOML")
        except ConfigFileError as exc:
            if name.endswith(".toml"):
                raise
            raise ConfigFileError(
                name, f"{exc.reason}; nor is it an opensips.cfg (no modparam(...) in it)"
            ) from exc
        missing = f"TOML with neither parameters nor a [{SECTION}] table"
    if not found.layer:
        raise ConfigFileError(name, f"no midgram parameter in it ({missing})")
    return found
