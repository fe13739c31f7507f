"""Tests of experiments/common."""
