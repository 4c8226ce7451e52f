"""SANA-WM's camera transforms of a head (UCPE): the first half of each head multiplied by the token's 4x4 ray
matrix in groups of four channels, the second half rotated by the camera rotary table, optionally shrunk back to
the input's RMS; `reference.py` is the spec a kernel is tested against."""
