"""DC-AE's multiscale projection (a depthwise kxk conv, then a 1x1 conv within each run of D channels) as one pass
over token-major activations; `reference.py` is the spec a kernel is tested against."""
