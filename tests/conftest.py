"""Shared test set-up.

- Hypothesis: no per-example deadline and no "too slow" health check. The suite runs on two
  cores beside real servers and load generators; timing checks would only add flakiness,
  while the properties themselves stay as strict.
"""

from hypothesis import HealthCheck, settings

settings.register_profile("midgram", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("midgram")
