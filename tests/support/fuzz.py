"""Shared hypothesis setup of the property-based tests.

All examples are derandomized (fixed seed) and bounded. Each fuzzing module
keeps its own `COUNTS = Counts()` and ends with a `test_print_counts` that
prints (`pytest -s`) and checks how much it fuzzed.
"""

from hypothesis import HealthCheck

SETTINGS = dict(
  deadline=None,
  derandomize=True,
  database=None,
  suppress_health_check=list(HealthCheck),
)


class Counts(dict):
  """Examples run, by kind."""

  def add(self, name, n=1):
    self[name] = self.get(name, 0) + n
