"""The parameters (``settings``: the table, their coercion, ``Settings``) and the config files
that give them (TOML, an existing opensips.cfg).
"""

from midgram.config.settings import PARAMETERS, Settings, load_settings

__all__ = ["PARAMETERS", "Settings", "load_settings"]
