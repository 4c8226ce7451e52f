"""SANA-Video's temporal conv (the Mix-FFN's Conv2d with kernel (3, 1) over frames, dense over channels) as one
implicit GEMM over token-major activations: `reference.py` is the spec a kernel is tested against."""
