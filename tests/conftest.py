"""Test-wide settings."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# The machines these run on are small and shared: a slow example is load, not a bug.
settings.register_profile(
    "swarmnet", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("swarmnet")
