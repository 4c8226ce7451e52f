"""The middle of SANA's Mix-FFN (GLUMBConv) on token-major activations: SiLU, depthwise 3x3, GLU."""
