"""A conv's bias and the activation after it in one pass over channels-last memory; `reference.py` is the spec a
kernel is tested against."""
