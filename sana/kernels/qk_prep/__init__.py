"""SANA-WM's query / key preparation: RMSNorm over the full width, ReLU, a scale and RoPE, in one pass;
`reference.py` is the spec a kernel is tested against."""
