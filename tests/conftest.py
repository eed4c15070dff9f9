"""Shared test set-up.

- tests/ is importable, for the helpers ``golden`` and ``servers``.
- Hypothesis: no per-example deadline and no "too slow" health check. The suite runs on two
  cores beside real servers and load generators; timing checks would only add flakiness,
  while the properties themselves stay as strict.
"""

import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

settings.register_profile("midgram", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("midgram")
