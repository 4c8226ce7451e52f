"""ReLU linear attention with RoPE on the numerator only (SANA-Video's self-attention): `reference.py` is the
spec, `triton.py` the kernels."""
