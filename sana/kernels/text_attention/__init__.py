"""Softmax attention from image (or video) tokens to the text's few hundred keys, token-major in and out;
`reference.py` is the spec a kernel is tested against."""
