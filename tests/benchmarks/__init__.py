"""Tests of the benchmark programs under benchmarks/."""
