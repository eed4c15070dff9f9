"""The ``midgram`` command: the only place in the package that prints or exits.

Each sub-command lives in its own module and is added to the group here. Library errors are
mapped to exit codes in one place (``exit_code_for``), so every sub-command reports failures
the same way.
"""

from __future__ import annotations

import click

from midgram import __version__
from midgram.cli.bench import bench
from midgram.cli.client import CLIENT_COMMANDS
from midgram.cli.serve import serve

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="midgram")
def cli() -> None:
    """midgram: OpenSIPS-compatible MI datagram server, library and client."""


cli.add_command(serve)
cli.add_command(bench)
for command in CLIENT_COMMANDS:
    cli.add_command(command)


def main() -> None:
    cli(prog_name="midgram")
