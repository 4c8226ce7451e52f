from .transformer import SanaTransformer, TransformerConfig
from .video_transformer import SanaVideoTransformer, VideoTransformerConfig
from .world_transformer import SanaWorldTransformer, WorldTransformerConfig

__all__ = ["SanaTransformer", "SanaVideoTransformer", "TransformerConfig", "VideoTransformerConfig",
           "SanaWorldTransformer", "WorldTransformerConfig"]
