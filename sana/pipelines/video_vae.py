"""The video VAEs as the SANA-Video pipelines use them: diffusers' `AutoencoderKLWan` (Wan 2.1, 480p models) and
`AutoencoderKLLTX2Video` (LTX-2, 720p models) as they are, loaded from `vae/` by the config's `_class_name`.

Latents are normalised per channel as diffusers' pipelines do it, with the VAE's `latents_mean` / `latents_std`
(Wan: config lists; LTX-2: buffers) and not its `scaling_factor`: encode `(z - mean) / std`, decode
`z / (1 / std) + mean`, in the VAE's dtype. Wan's decoder clamps its output to [-1, 1] itself.

On a CPU, Wan's causal 3D convolutions run as 2D ones (`conv3d_as_conv2d`): PyTorch takes its slow unfolding
conv3d there (81% of a nano clip's decode), and a 2D convolution over the frames each output frame reads, stacked
as channels, is the same sum in oneDNN's fast path.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from ..components import component_variant, require_component
from ..errors import SanaError
from .sizes import VideoVaeGeometry, read_video_vae_geometry


class VideoVAE:
    """A diffusers video autoencoder (`module`, an nn.Module the memory placement moves) and its geometry."""

    def __init__(self, module: torch.nn.Module, geometry: VideoVaeGeometry):
        self.module = module
        self.geometry = geometry

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1 / std), each [1, C, 1, 1, 1] in `like`'s dtype and device, the reciprocal taken there."""
        if self.geometry.class_name == "AutoencoderKLWan":
            mean = torch.tensor(self.module.config.latents_mean)
            std = torch.tensor(self.module.config.latents_std)
        else:
            mean, std = self.module.latents_mean, self.module.latents_std
        channels = self.geometry.channels
        mean = mean.view(1, channels, 1, 1, 1).to(like.device, like.dtype)
        inv_std = 1.0 / std.view(1, channels, 1, 1, 1).to(like.device, like.dtype)
        return mean, inv_std

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> normalised latents [B, C, 1, h, w] of one-frame clips (the
        distribution's mode: no noise is drawn), in the VAE's dtype."""
        clip = pixels.unsqueeze(2).to(self.device, self.dtype)  # [B, 3, 1, H, W]
        latents = self.module.encode(clip).latent_dist.mode()
        mean, inv_std = self._stats(latents)
        return (latents - mean) * inv_std

    @torch.no_grad()
    def encode_clip(self, pixels: torch.Tensor) -> torch.Tensor:
        """Clips [B, 3, F, H, W] in [-1, 1] -> normalised latents [B, C, F', h, w] (the distribution's mode), in the
        VAE's dtype: what the DiT is trained to produce (fine-tuning caches these)."""
        latents = self.module.encode(pixels.to(self.device, self.dtype)).latent_dist.mode()
        mean, inv_std = self._stats(latents)
        return (latents - mean) * inv_std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, F, h, w] -> pixels [B, 3, (F - 1) * temporal + 1, H, W] in about [-1, 1],
        in the VAE's dtype; tiled as the module is set (`sana.placement.video_decode_tiling`)."""
        latents = latents.to(self.device, self.dtype)
        mean, inv_std = self._stats(latents)
        return self.module.decode(latents / inv_std + mean, return_dict=False)[0]


def conv3d_as_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     stride: tuple[int, int, int]) -> torch.Tensor:
    """`F.conv3d(x, weight, bias, stride)` (no padding, dilation 1, one group) as one 2D convolution: output frame f
    reads input frames f * st .. f * st + kt - 1, stacked as channels. x [B, C, T, H, W], weight [O, C, kt, kh, kw]
    -> [B, O, F, H', W'], contiguous; the same sums in another order (fp32: ~1e-6 relative)."""
    b, c, t, h, w = x.shape
    o, _, kt, kh, kw = weight.shape
    st, sh, sw = stride
    frames = (t - kt) // st + 1
    last = st * (frames - 1) + 1
    taps = torch.stack([x[:, :, i : i + last : st] for i in range(kt)], dim=2)  # [B, C, kt, F, H, W]
    planes = taps.permute(0, 3, 2, 1, 4, 5).reshape(b * frames, kt * c, h, w)  # channels in (tap, C) order
    kernel = weight.permute(0, 2, 1, 3, 4).reshape(o, kt * c, kh, kw)
    out = F.conv2d(planes, kernel, bias, stride=(sh, sw))  # [B*F, O, H', W']
    return out.view(b, frames, o, *out.shape[-2:]).transpose(1, 2).contiguous()


def _conv_forward(module: torch.nn.Conv3d, x: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    if x.device.type != "cpu":
        return F.conv3d(x, weight, bias, module.stride)
    return conv3d_as_conv2d(x, weight, bias, module.stride)


def route_conv3d_on_cpu(module: torch.nn.Module) -> int:
    """Make `module`'s unpadded 3D convolutions (Wan's causal ones pad before they convolve) take
    `conv3d_as_conv2d` on a CPU; on other devices they stay 3D. Returns how many were routed."""
    routed = 0
    for conv in module.modules():
        if (isinstance(conv, torch.nn.Conv3d) and tuple(conv.padding) == (0, 0, 0) and conv.groups == 1
                and tuple(conv.dilation) == (1, 1, 1)):
            conv._conv_forward = partial(_conv_forward, conv)  # what nn.Conv3d.forward calls, after Wan's padding
            routed += 1
    return routed


def load_video_vae(model_dir: Path, *, dtype: torch.dtype, device: torch.device | str,
                   variant: str | None = None) -> VideoVAE:
    """diffusers' autoencoder named by `vae/config.json`'s `_class_name`, in `dtype` on `device`."""
    import diffusers

    vae_dir = require_component(model_dir, "vae")
    geometry = read_video_vae_geometry(model_dir)
    cls = getattr(diffusers, geometry.class_name)
    from ..loading.files import BUILD_LOCK

    with BUILD_LOCK:
        try:
            module = cls.from_pretrained(vae_dir, torch_dtype=dtype, variant=component_variant(vae_dir, variant))
        except (OSError, ValueError, RuntimeError) as exc:
            raise SanaError(f"cannot load the VAE from {vae_dir}: {str(exc).splitlines()[0]}") from None
        if geometry.class_name == "AutoencoderKLWan":
            route_conv3d_on_cpu(module)
    return VideoVAE(module.to(device).eval(), geometry)
