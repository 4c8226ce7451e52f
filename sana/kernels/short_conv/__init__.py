"""SANA-WM's symmetric depthwise conv over frames (the GDN blocks' short convolution on k): `reference.py` is the
spec a kernel is tested against."""
