"""fp8 (e4m3) row quantization and the fp8 linear built on it."""
