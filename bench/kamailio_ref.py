"""Kamailio (Debian package ``kamailio``) with jsonrpcs on a datagram socket, nothing else:
the config the benchmark harness and the tests both start it with (as
``shared/configs/kamailio-jsonrpcs-dgram.cfg`` explains), and where its pieces live.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

KAMAILIO_MISSING = "kamailio is not installed (apt-get install kamailio)"


def kamailio_binary() -> str | None:
    return shutil.which("kamailio") or next(
        (p for p in ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio") if os.access(p, os.X_OK)),
        None,
    )


def kamailio_modules() -> str:
    """Where the Debian package puts jsonrpcs.so (the folder is named after the architecture)."""
    found = sorted(Path("/usr/lib").glob("*/kamailio/modules/jsonrpcs.so"))
    found += sorted(Path("/usr/lib/kamailio/modules").glob("jsonrpcs.so"))
    return f"{found[0].parent}/" if found else "/usr/lib/x86_64-linux-gnu/kamailio/modules/"


def kamailio_config(
    rundir: Path,
    dgram_socket: str,
    sip_port: int,
    *,
    workers: int = 1,
    pretty: bool = False,
    debug: int = 1,
    modules: tuple[str, ...] = (),
) -> str:
    """jsonrpcs over datagrams only (transport 4) on ``dgram_socket``, run from ``rundir``.
    ``modules``: more modules to load (``"kex"``: its statistics RPCs)."""
    more = "".join(f'loadmodule "{module}.so"\n' for module in modules)
    return f"""#!KAMAILIO
debug={debug}
log_stderror=yes
children=1
listen=udp:127.0.0.1:{sip_port}
disable_tcp=yes
enable_sctp=no
auto_aliases=no
dns=no
rev_dns=no
udp4_raw=0
run_dir="{rundir}"
mpath="{kamailio_modules()}"
loadmodule "jsonrpcs.so"
{more}modparam("jsonrpcs", "transport", 4)
modparam("jsonrpcs", "dgram_socket", "{dgram_socket}")
modparam("jsonrpcs", "dgram_workers", {workers})
modparam("jsonrpcs", "pretty_format", {int(pretty)})
request_route {{
	exit;
}}
"""
