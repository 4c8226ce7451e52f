"""RMSNorm over the channels of token-major activations, with weight, bias and an optional residual add."""
