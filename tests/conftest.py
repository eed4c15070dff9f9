"""Shared test set-up: make tests/golden.py importable as `golden`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
