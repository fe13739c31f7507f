"""The federated training sweep (`python -m experiments.cifar_sweep`): each
bits scheme trained once per seed, every allocation policy priced inside the
same compiled round; results, figures, TensorBoard logs and checkpoints."""
