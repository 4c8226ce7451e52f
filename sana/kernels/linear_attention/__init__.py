"""Fused ReLU linear attention (SANA's self-attention): `reference.py` is the spec, `triton.py` the kernels."""
