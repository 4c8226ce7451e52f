"""Rewards that are models: CLIPScore and PickScore (transformers' CLIP classes), HPSv2 and ImageReward.

CLIP and PickScore weights come from a local folder (`--reward pickscore=DIR`: config.json, weights, the
processor's files) or from the hub cache, where `sana models pull clip|pickscore` puts them; a run never
downloads. PickScore's processor (tokenizer and image preprocessing) lives in the LAION ViT-H/14 repo, its
weights in its own. HPSv2 and ImageReward run through their packages, which fetch their own checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFound, UsageError

SMALL_SUFFIXES = (".json", ".txt")
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class RewardModelSpec:
    name: str
    repo: str  # the weights (and config)
    processor_repo: str | None  # the tokenizer and image processor, when not beside the weights
    description: str

    @property
    def repos(self) -> list[str]:
        return [self.repo] + ([self.processor_repo] if self.processor_repo else [])


REWARD_MODELS = {
    "clip": RewardModelSpec("clip", "openai/clip-vit-large-patch14", None,
                            "CLIPScore reward: CLIP ViT-L/14 image-text cosine similarity"),
    "pickscore": RewardModelSpec("pickscore", "yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                                 "PickScore v1 reward: CLIP ViT-H/14 trained on Pick-a-Pic preferences"),
}


def find_reward_model(name: str) -> RewardModelSpec | None:
    return REWARD_MODELS.get(name.strip().lower())


# -- on disk ------------------------------------------------------------------------------------------------

def _has_weights(folder: Path) -> bool:
    return any((folder / n).exists() for n in WEIGHT_NAMES) or any(folder.glob("model-*-of-*.safetensors"))


def _has_processor(folder: Path) -> bool:
    tokenizer = (folder / "tokenizer.json").exists() or (folder / "vocab.json").exists()
    image = (folder / "preprocessor_config.json").exists() or (folder / "processor_config.json").exists()
    return image and tokenizer


def locate_reward_model(name: str, folder: str | None = None) -> tuple[Path, Path]:
    """(weights folder, processor folder) of a CLIP-type reward, from `folder` or the hub cache; never downloads."""
    spec = REWARD_MODELS[name]
    if folder is not None:
        path = Path(folder).expanduser()
        if not (path / "config.json").is_file() or not _has_weights(path) or not _has_processor(path):
            raise UsageError(f"--reward {name}={folder}: not a CLIP model folder",
                             "it needs config.json, model.safetensors and the processor's files (preprocessor_config.json, the tokenizer)")
        return path.resolve(), path.resolve()
    from ..hub import cached_snapshot

    found = []
    for repo, check in ((spec.repo, lambda p: (p / "config.json").exists() and _has_weights(p)),
                        (spec.processor_repo or spec.repo, _has_processor)):
        snapshot = cached_snapshot(repo)
        if snapshot is None or not check(snapshot[0]):
            raise ModelNotFound(f"the {name} reward's weights are not downloaded ({repo})",
                                f"run: sana models pull {name}")
        found.append(snapshot[0])
    return found[0], found[1]


def reward_model_status(spec: RewardModelSpec) -> tuple[str, int]:
    """("yes" | "partial" | "no", bytes on disk) for `sana models list`."""
    from ..hub import cached_repos

    cached = cached_repos()
    hits = [cached.get(repo.lower()) for repo in spec.repos]
    size = sum(h.size_on_disk for h in hits if h)
    try:
        locate_reward_model(spec.name)
        return "yes", size
    except ModelNotFound:
        return ("partial" if any(hits) else "no"), size


def files_to_pull(files: list[str], weights: bool) -> list[str]:
    """A CLIP repo's top-level config, tokenizer and processor files, plus (for the weights repo) one weight
    format: safetensors when the repo has them, else the PyTorch .bin (read with weights_only)."""
    top = [f for f in files if "/" not in f]
    chosen = [f for f in top if f.endswith(SMALL_SUFFIXES)]
    if weights:
        safetensors = [f for f in top if f.endswith(".safetensors")]
        chosen += safetensors or [f for f in top if f.startswith("pytorch_model") and f.endswith(".bin")]
    return sorted(chosen)


def pull_reward_model(spec: RewardModelSpec, on_progress=None) -> list[Path]:
    """Download the reward model's repos into the hub cache (the `sana models pull` path)."""
    from ..hub import pull_files

    paths = []
    for repo in spec.repos:
        weights = repo == spec.repo
        paths.append(pull_files(repo, lambda files, w=weights: files_to_pull(files, w), label=spec.name,
                                on_progress=on_progress))
    return paths


# -- the models -------------------------------------------------------------------------------------------

class ClipReward:
    """Cosine similarity of CLIP image and text embeddings (`clip`), or PickScore's logit_scale x cosine
    (`pickscore`), with the model's own processor (resize, centre crop, normalisation, tokenizer)."""

    def __init__(self, name: str, folder: str | None, device):
        import torch
        from transformers import AutoProcessor, CLIPModel

        weights, processor = locate_reward_model(name, folder)
        self.name, self.device = name, torch.device(device)
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        try:
            self.processor = AutoProcessor.from_pretrained(processor, trust_remote_code=False)
            self.model = CLIPModel.from_pretrained(weights, dtype=dtype, trust_remote_code=False).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise ModelNotFound(f"cannot load the {name} reward from {weights}: {str(exc).splitlines()[0]}",
                                f"run: sana models pull {name}") from None

    def __call__(self, images, prompts: list[str], metadata: list[dict]):
        import torch

        from .plugins import to_uint8_arrays

        inputs = self.processor(text=prompts, images=to_uint8_arrays(images), padding=True, truncation=True,
                                max_length=77, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        image_out = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device, dtype))
        text_out = self.model.get_text_features(input_ids=inputs["input_ids"].to(self.device),
                                                attention_mask=inputs["attention_mask"].to(self.device))
        image_emb = _pooled(image_out).float()
        text_emb = _pooled(text_out).float()
        cosine = torch.nn.functional.cosine_similarity(image_emb, text_emb, dim=-1)  # [B]
        if self.name == "pickscore":
            return self.model.logit_scale.exp().float() * cosine
        return cosine


def _pooled(output):
    """transformers 5 returns a model output whose pooler_output is the projection; 4.x returned the tensor."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


class HpsReward:
    """HPSv2.1 through the hpsv2 package (one call per distinct prompt)."""

    def __init__(self, device):
        import hpsv2

        self.hpsv2 = hpsv2

    def __call__(self, images, prompts: list[str], metadata: list[dict]):
        from PIL import Image

        from .plugins import to_uint8_arrays

        pils = [Image.fromarray(a) for a in to_uint8_arrays(images)]
        scores = [0.0] * len(pils)
        for prompt in dict.fromkeys(prompts):
            rows = [i for i, p in enumerate(prompts) if p == prompt]
            values = self.hpsv2.score([pils[i] for i in rows], prompt, hps_version="v2.1")
            for i, v in zip(rows, values):
                scores[i] = float(v)
        return scores


class ImageRewardReward:
    """ImageReward v1.0 through the image-reward package."""

    def __init__(self, device):
        import ImageReward

        self.model = ImageReward.load("ImageReward-v1.0", device=str(device))

    def __call__(self, images, prompts: list[str], metadata: list[dict]):
        from PIL import Image

        from .plugins import to_uint8_arrays

        scores = []
        for array, prompt in zip(to_uint8_arrays(images), prompts):
            value = self.model.score(prompt, [Image.fromarray(array)])
            scores.append(float(value[0] if isinstance(value, (list, tuple)) else value))
        return scores


def load(name: str, folder: str | None, device):
    if name in REWARD_MODELS:
        return ClipReward(name, folder, device)
    if name == "hpsv2":
        return HpsReward(device)
    if name == "imagereward":
        return ImageRewardReward(device)
    raise UsageError(f"unknown reward '{name}'")
