"""A tiny random SANA-WM transformer built with diffusers' own `SanaWMTransformer3DModel`, and its inputs built the
way `SanaWMPipeline` builds them (diffusers' `prepare_camera` on a random camera path).

The config is the reference's tiny one (4 blocks, softmax in blocks 1 and 3, width 48, self-attention heads of
24, 2 cross-attention heads, 8 latent channels, 16 caption channels). Every parameter is re-drawn as noise: the
Plücker embedder and the short convolutions, which diffusers zero-initialises, would otherwise make the camera
paths vanish.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tiny_transformer import noise_all_parameters

# Weight noise N(0, 0.07^2). The softmax blocks round their inputs to bf16 (as diffusers does, even in fp32), which
# turns a last-bit fp32 difference upstream (a Mix-FFN as linears rather than convs) into a bf16 ulp now and then,
# and a random network amplifies those flips: at 0.1 to ~1e-5 of the output, at 0.07 to ~2e-6 at most, while
# leaving out the bf16 rounding still moves it by 2e-5 and the padded-head scale by 6e-4.
WEIGHT_NOISE = 0.07
LATENT_CHANNELS = 8
CAPTION_CHANNELS = 16


def transformer_config() -> dict:
    """diffusers kwargs of the tiny model."""
    return dict(in_channels=LATENT_CHANNELS, num_layers=4, hidden_size=48, num_attention_heads=2,
                patch_size=(1, 1, 1), softmax_every_n=2, linear_head_dim=24, ffn_type="GLUMBConvTemp",
                t_kernel_size=3, conv_kernel_size=4, k_conv_only=True, pos_embed_type="wan_rope", qk_norm=True,
                cross_norm=True, y_norm=True, cam_attn_compress=1, use_chunk_plucker_post_attn=True,
                chunk_plucker_channels=48, chunk_plucker_post_attn_blocks=4, caption_channels=CAPTION_CHANNELS,
                mlp_ratio=2.0)


def build_reference(path: Path | None = None, seed: int = 0, **overrides):
    """A noised diffusers `SanaWMTransformer3DModel` in eval mode, saved to `path` when given."""
    from diffusers import SanaWMTransformer3DModel

    torch.manual_seed(seed)
    ref = SanaWMTransformer3DModel(**{**transformer_config(), **overrides}).eval()
    noise_all_parameters(ref, seed + 1, scale=WEIGHT_NOISE)
    if path is not None:
        ref.save_pretrained(path)
    return ref


def _rotation(gen: torch.Generator, scale: float) -> np.ndarray:
    """exp of a random skew-symmetric matrix: a rotation of up to ~scale radians."""
    w = torch.randn(3, generator=gen, dtype=torch.float64) * scale
    skew = torch.tensor([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]], dtype=torch.float64)
    return torch.linalg.matrix_exp(skew).numpy()


def camera_path(frames: int, seed: int = 0, turn: float = 0.3, move: float = 0.5):
    """(c2w [F, 4, 4], intrinsics [F, 4]) float32: random rotations and translations, varied intrinsics."""
    gen = torch.Generator().manual_seed(seed)
    c2w = np.tile(np.eye(4), (frames, 1, 1))
    for i in range(frames):
        c2w[i, :3, :3] = _rotation(gen, turn)
        c2w[i, :3, 3] = torch.randn(3, generator=gen, dtype=torch.float64).numpy() * move
    base = np.array([700.0, 690.0, 640.0, 352.0])
    intrinsics = base * (1 + 0.1 * torch.rand(frames, 4, generator=gen, dtype=torch.float64).numpy())
    return c2w.astype(np.float32), intrinsics.astype(np.float32)


def camera_inputs(batch: int, latent_frames: int, height: int, width: int, seed: int = 0, **path_kwargs):
    """(camera_conditions [B, T, 20], chunk_plucker [B, 48, T, H, W]) from diffusers' `prepare_camera`, as
    `SanaWMPipeline._build_camera_kwargs` makes them (one path, repeated over the batch)."""
    from diffusers.pipelines.sana_wm.cam_utils import prepare_camera

    pixel_frames = 8 * (latent_frames - 1) + 1
    c2w, intrinsics = camera_path(pixel_frames, seed, **path_kwargs)
    cam = prepare_camera(c2w, intrinsics, target_size=(height * 32, width * 32), vae_stride=(8, 32, 32))
    raymap = cam["raymap"].unsqueeze(0).repeat(batch, 1, 1)
    plucker = cam["chunk_plucker"].unsqueeze(0).repeat(batch, 1, 1, 1, 1)
    return raymap, plucker


def inputs(batch: int = 2, frames: int = 3, height: int = 4, width: int = 6, text_len: int = 7, seed: int = 0):
    """Model inputs as the pipeline passes them: latents [B, C, T, H, W]; per-frame timesteps [B, 1, T] with
    frame 0 at 0 (the clean first frame) and fractional values elsewhere; text [B, 1, L, C_text]; a mask [B, L]
    with padding in row 0; camera_conditions [B, T, 20]; chunk_plucker [B, 48, T, H, W]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, LATENT_CHANNELS, frames, height, width, generator=gen)
    timestep = torch.full((batch, 1, frames), 857.69)
    timestep[:, :, 0] = 0.0
    timestep[1:, :, 1:] = 602.15  # the other rows at another step
    text = torch.randn(batch, 1, text_len, CAPTION_CHANNELS, generator=gen)
    mask = torch.ones(batch, text_len, dtype=torch.long)
    mask[0, 4:] = 0
    camera, plucker = camera_inputs(batch, frames, height, width, seed)
    return x, timestep, text, mask, camera, plucker
