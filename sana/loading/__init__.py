"""The one loader of our models, one module per model: the image DiT (`image.py`: diffusers-format folders, single,
sharded or variant safetensors, NVlabs `.pth` checkpoints and single files), the video DiT (`video.py`), the
world-model DiT (`world.py`) and the DC-AE decoder (`dcae.py`), each through one key mapping onto a model built on
the meta device (`files.py`: reading and assigning).
"""

from .dcae import dcae_diffusers_to_engine, load_vae_decoder, vae_decoder_from_state
from .files import WEIGHTS_NAME, LoadReport, read_checkpoint, read_safetensors, transformer_files
from .image import (
    diffusers_to_engine,
    engine_to_diffusers,
    engine_to_diffusers_name,
    is_original_layout,
    is_pointwise_conv,
    load_transformer,
    original_to_diffusers,
)
from .video import VIDEO_CLASS_NAME, load_video_transformer, video_engine_to_diffusers
from .world import WORLD_CLASS_NAME, load_world_transformer, world_diffusers_to_engine, world_transformer_from_state

__all__ = [
    "WEIGHTS_NAME", "LoadReport", "read_checkpoint", "read_safetensors", "transformer_files",
    "diffusers_to_engine", "engine_to_diffusers", "engine_to_diffusers_name", "is_original_layout",
    "is_pointwise_conv", "load_transformer", "original_to_diffusers",
    "VIDEO_CLASS_NAME", "load_video_transformer", "video_engine_to_diffusers",
    "WORLD_CLASS_NAME", "load_world_transformer", "world_diffusers_to_engine", "world_transformer_from_state",
    "dcae_diffusers_to_engine", "load_vae_decoder", "vae_decoder_from_state",
]
