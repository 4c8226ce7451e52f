"""Benchmarks against diffusers at the released configs with random weights, on one GPU, in one run (`sana bench`):
`image` (the image DiT forward, prompt to image, the DC-AE decode), `clip_dit` (the video and world-model DiT
forwards, with diffusers + torch.compile timed in a child process), `clip_runs` (whole clips after load) and
`capped` (clips through the CLI under a memory cap). Nothing here prints: rows go back to the caller."""
