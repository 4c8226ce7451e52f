"""SANA-WM's output gate, x * silu(gate) in fp32 rounded once; `reference.py` is the spec a kernel is tested
against."""
