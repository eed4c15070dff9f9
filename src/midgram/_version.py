"""midgram's version: one place, read by the package, its metadata and its modules (which
import it from here, not from ``midgram``, so that they need not load the package's face)."""

__version__ = "0.1.0"
