"""The server's parameters and the config files that give them. Sans-IO.

- ``settings``: each parameter declared once (``Settings``), the table derived from it
  (``PARAMETERS``, ``ALIASES``), and how layers of values merge;
- ``coercion``: how each value is checked and made its type;
- ``rules``: what is checked between parameters;
- ``files``: the config files (TOML, an existing opensips.cfg);
- ``table``: the tables of docs/parameters.md and docs/tracing.md, rendered from ``PARAMETERS``.

``default_socket_name`` (wire.address) and ``parse_bwlist`` (engine.tracing) are here too, as
they were when midgram.config was one module.
"""

from midgram.config.files import (
    ConfigFile,
    OpensipsCfg,
    load_toml,
    parse_opensips_cfg,
    read_config,
)
from midgram.config.rules import trace_target
from midgram.config.settings import (
    ALIASES,
    PARAMETERS,
    SECTION,
    Kind,
    Origin,
    Parameter,
    Settings,
    load_settings,
    merge,
)
from midgram.engine.tracing import parse_bwlist
from midgram.wire.address import default_socket_name

__all__ = [
    "ALIASES",
    "PARAMETERS",
    "SECTION",
    "ConfigFile",
    "Kind",
    "OpensipsCfg",
    "Origin",
    "Parameter",
    "Settings",
    "default_socket_name",
    "load_settings",
    "load_toml",
    "merge",
    "parse_bwlist",
    "parse_opensips_cfg",
    "read_config",
    "trace_target",
]
