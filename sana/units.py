"""Byte units, in a module that imports nothing heavy (argument checks run before torch is imported)."""

GiB = 1 << 30
