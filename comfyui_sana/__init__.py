"""ComfyUI nodes over the sana engine: the same kernels, memory plan, samplers and metadata as `sana gen`.

ComfyUI imports this folder from its `custom_nodes/` (`sana comfy install COMFYUI_DIR` puts it there); the Python
that runs ComfyUI needs the `sana-cli` package installed. Types between the nodes: SANA_MODEL (a model handle,
loaded on first use), SANA_CONDITIONING (encoded prompts), ComfyUI's LATENT {"samples": [B, C, h, w]} (C = 32 and
h, w = H/32, W/32 for the released models) and IMAGE [B, H, W, 3] in 0..1, and SANA_INFO (the metadata records
Sana Save writes).
"""

from .clip_nodes import SanaVideo, SanaWorld
from .image_nodes import (SanaDecode, SanaGenerate, SanaLoRA, SanaModelLoader, SanaSampler, SanaSprint,
                          SanaTextEncode)
from .save_node import SanaSave

# Node ids carry "SanaEngine" so they never collide with the other SANA node packs' (SanaTextEncode, ...).
NODES = {
    "Sana Model Loader": SanaModelLoader,
    "Sana Text Encode": SanaTextEncode,
    "Sana Sampler": SanaSampler,
    "Sana Decode": SanaDecode,
    "Sana Generate": SanaGenerate,
    "Sana Sprint": SanaSprint,
    "Sana LoRA": SanaLoRA,
    "Sana Save": SanaSave,
    "Sana Video": SanaVideo,
    "Sana World": SanaWorld,
}
NODE_CLASS_MAPPINGS = {"SanaEngine" + cls.__name__[len("Sana"):]: cls for cls in NODES.values()}
NODE_DISPLAY_NAME_MAPPINGS = {"SanaEngine" + cls.__name__[len("Sana"):]: title for title, cls in NODES.items()}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
