"""``python -m midgram``: the same as the ``midgram`` command."""

from midgram.cli import main

main()
