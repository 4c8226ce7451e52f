"""Assembling a nearest-upsampled 3x3 conv from its four 2x2 phase convs (+ the up block's shortcut)."""
