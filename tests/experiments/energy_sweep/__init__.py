"""Tests of the system-level energy sweep (experiments/energy_sweep)."""
