"""Bidirectional gated delta rule over video frames (SANA-WM's self-attention recurrence): `reference.py` is the
spec a kernel is tested against."""
