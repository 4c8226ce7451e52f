"""The nano SANA model: a tiny model of the real architecture, trained on a synthetic shapes grammar, that runs
offline on any CPU.

`shapes` is the grammar (scene specs, rendering, captions, datasets), `adherence` the analytic checker that
scores images against captions, `autoencoder` the DC-AE and its training loop, `build` the remaining parts and
the diffusers-format directory.
"""
