"""The `sana` command line: a thin layer over the `sana` engine."""
