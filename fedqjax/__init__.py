"""fedqjax: federated diffusion with on-demand quantization (arXiv 2403.04430) in JAX."""

__version__ = "0.1.0"
