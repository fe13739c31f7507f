"""Slow, obviously-correct references the tests (and benchmarks) check the
library against: the sequential round (a Python loop over clients composing
the same phases) and the per-device energy oracle (scipy)."""
