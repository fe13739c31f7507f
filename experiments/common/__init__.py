"""What the experiments share: the settings tree <-> ConfigDict parser, one-line
command-line errors, quiet logs and the jax.distributed start-up."""
