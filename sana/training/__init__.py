"""Fine-tuning: supervised (LoRA or full, images and clips) and reward fine-tuning (`rl`), one run folder format."""
