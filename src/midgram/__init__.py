"""midgram: an OpenSIPS-compatible MI datagram server, library and client."""

__version__ = "0.1.0"
