"""A linear whose epilogue adds the block's gated residual: x + gate * (h W^T + b) in one GEMM, so the linear's
output never goes to memory and back. `reference.py` is the spec a kernel is tested against."""
