from .transformer import SanaTransformer, TransformerConfig

__all__ = ["SanaTransformer", "TransformerConfig"]
