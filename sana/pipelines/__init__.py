"""Generation pipelines, one short module each, built on shared parts.

    sizes    aspect-ratio bins and frame-count rules (no torch: the CLI checks arguments with it)
    common   what every pipeline shares: events to the caller, out-of-memory recovery, pixel conversion
    image    text to image (SANA 1.0 / 1.5 / 2K / 4K, PAG, Sprint)
    video    text to video and image to video (SANA-Video)
    video_vae  the video VAEs (diffusers' Wan 2.1 and LTX-2 autoencoders) as the video pipeline uses them
    world    a first frame and a camera path to a clip (SANA-WM stage 1)
    world_refiner  SANA-WM's stage 2, diffusers' LTX-2 refiner on the stage-1 latents (`sana world --refine`)
"""
