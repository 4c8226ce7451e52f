"""LayerNorm + adaLN modulation, and the gated residual fused into the next modulated norm."""
