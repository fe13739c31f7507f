"""Peer implementations for benchmarks/peers.py (PyTorch loop, Flower sim)."""
