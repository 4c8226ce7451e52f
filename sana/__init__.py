"""sana: a lightweight inference and training engine for NVIDIA's SANA linear diffusion transformers."""

__version__ = "0.1.0"
