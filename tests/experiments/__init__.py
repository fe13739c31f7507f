"""Tests of the programs under experiments/."""
