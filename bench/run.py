"""``python bench/run.py``: run midgram's benchmark suite (see harness.py, ``--help``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import main

if __name__ == "__main__":
    sys.exit(main())
