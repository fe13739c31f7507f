"""Peer implementations for benchmarks/peers/__main__.py (PyTorch loop, Flower sim)."""
