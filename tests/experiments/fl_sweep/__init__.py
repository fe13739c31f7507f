"""Tests of the training sweep (experiments/fl_sweep)."""
