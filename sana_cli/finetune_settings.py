"""`sana finetune`'s settings, before torch loads: the run's TrainConfig from the flags given, over a resumed run's
own settings or the defaults; the base model's folder, name and sampling defaults; a config for a DiT trained from
scratch checked against the model's autoencoder and text encoder. Shared with `--rl` (`finetune_rl.py`)."""

from __future__ import annotations

from pathlib import Path

from sana.errors import UsageError

from .finetune_resume import same_data


def settings_from_flags(flags: dict, data: Path, out_dir: Path, saved):
    """TrainConfig from the flags given, on top of a resumed run's settings or the defaults."""
    import dataclasses

    from sana.training.config import TrainConfig
    from sana.training.data import data_fingerprint

    if saved is not None:
        base = dataclasses.asdict(saved)
    else:
        model_dir, native = base_model(flags.get("model"))
        random_init = flags.get("init") == "random"
        full = flags.get("full", random_init)
        base = dataclasses.asdict(TrainConfig(data=str(data), out=str(out_dir), model_dir=str(model_dir), resolution=native,
                                              model=model_name(flags.get("model")),
                                              sampling_defaults=base_sampling_defaults(flags.get("model"))))
        base.update(mode="full" if full else "lora", lr=2e-4 if random_init else 2e-5 if full else 1e-4)
        from .finetune_video import video_settings

        base.update(video_settings(flags.get("model"), model_dir, flags))
        if random_init and "config" in flags:
            base["transformer_config"] = transformer_config_from(flags["config"], Path(base["model_dir"]))
    base.update(data=recorded_data(data, saved), out=str(out_dir.expanduser().resolve()),
                data_fingerprint=data_fingerprint(data))
    renames = {"full": None, "model": None, "config": None, "res": "resolution", "keep": "keep_checkpoints", "rl": None,
               "val_prompt": "val_prompts", "compile_model": "compile", "cache": "cache_dir", "resume": None, "resume_from": None, "gpus": None,
               "data": None, "out": None}
    apply_flags(base, flags, renames, saved)
    if flags.get("full") is not None:  # on --resume too, where a changed mode is then refused like the rest
        base["mode"] = "full" if flags["full"] else "lora"
    elif saved is not None and flags.get("init") == "random":
        base["mode"] = "full"
    if saved is not None and "config" in flags:
        base["transformer_config"] = transformer_config_from(flags["config"], Path(base["model_dir"]))
    if base["val_prompts"] and not base["val_every"]:
        base["val_every"] = base["checkpoint_every"]
    return TrainConfig(**base)


def recorded_data(data, saved) -> str:
    """The data a run's settings name: a resumed run's own spelling while it is the same folder or file (so only
    other data shows as a change), else its absolute path (the run then resumes from any folder)."""
    if saved is not None and same_data(saved.data, str(data)):
        return saved.data
    return str(Path(data).expanduser().resolve())


def apply_flags(base: dict, flags: dict, renames: dict, saved) -> None:
    """The settings the flags given name, into `base` (`renames`: flag -> setting, None for a flag that is none);
    a resumed run (`saved`) given another --model takes its folder."""
    for flag, value in flags.items():
        name = renames.get(flag, flag)
        if name is None or name not in base:
            continue
        if name == "lora_targets":
            value = [t for t in value.split(",") if t.strip()]
        base[name] = str(value) if isinstance(value, Path) else value
    if saved is not None and "model" in flags and not same_model(flags["model"], saved):
        base["model_dir"] = str(base_model(flags["model"])[0])  # refused as a change of model, said as such
        base["model"] = model_name(flags["model"])
        base["sampling_defaults"] = base_sampling_defaults(flags["model"])


def same_model(arg: str, saved) -> bool:
    """--model on a resume names the run's model: the same registry name, or the same folder."""
    if saved.model and model_name(arg) == saved.model:
        return True
    return base_model(arg)[0] == Path(saved.model_dir)


def model_name(arg: str | None) -> str:
    """--model as a run records it: a registry name as given (the default model's when none is), else the folder's
    absolute path."""
    from sana.registry import find_spec

    from .generation import default_model

    arg = arg or default_model("gen")
    return arg if find_spec(arg) is not None else str(Path(arg).expanduser().resolve())


def base_sampling_defaults(arg: str | None) -> dict:
    """The base model's sampling defaults, for the model a run exports: its preset's (less the download
    precision), or those its folder carries (a fine-tune of a fine-tune)."""
    from sana.components import folder_sampling_defaults
    from sana.hub import resolve_model

    from .generation import default_model

    resolved = resolve_model(arg or default_model("gen"))
    if resolved.spec is not None:
        return {key: value for key, value in resolved.spec.defaults.items() if key != "dtype"}
    return folder_sampling_defaults(resolved.path)


def base_model(arg: str | None) -> tuple[Path, int]:
    """The base model's folder and native resolution."""
    from sana.components import read_json
    from sana.hub import resolve_model

    from .generation import default_model

    resolved = resolve_model(arg or default_model("gen"))
    folder = resolved.path
    for part in ("transformer", "vae", "text_encoder", "tokenizer"):
        if not (folder / part).is_dir():
            raise UsageError(f"{arg} has no {part}/ folder", "fine-tuning needs a complete diffusers-format SANA model")
    from .finetune_video import video_native

    native = video_native(folder)
    if native is not None:
        return folder.resolve(), native
    tconf = read_json(folder / "transformer" / "config.json")
    vconf = read_json(folder / "vae" / "config.json")
    factor = 2 ** (len(vconf.get("encoder_block_out_channels", [0] * 6)) - 1)
    return folder.resolve(), int(tconf.get("sample_size", 32)) * factor * int(tconf.get("patch_size", 1))


def check_config_fits(config: dict, model_dir: Path, label: str) -> None:
    """--init random --config: the DiT must take the base model's autoencoder latents and text features."""
    from sana.components import read_json

    vae = read_json(model_dir / "vae" / "config.json")
    latent = vae.get("latent_channels", vae.get("z_dim"))  # DC-AE's name, Wan's name
    text = read_json(model_dir / "text_encoder" / "config.json").get("hidden_size")
    wanted = {"in_channels": latent, "out_channels": latent, "caption_channels": text}
    wrong = [f"{key} {config.get(key)} (the {'autoencoder makes' if key != 'caption_channels' else 'text encoder gives'}"
             f" {value})" for key, value in wanted.items()
             if value is not None and config.get(key) is not None and int(config[key]) != int(value)]
    if wrong:
        raise UsageError(f"--config does not fit {label}: " + ", ".join(wrong),
                         "use a config made for this autoencoder and text encoder, or another --model")


def transformer_config_from(arg: str, model_dir: Path | None = None) -> dict:
    """--config: a registry model's DiT config, or a config.json file: the keys it sets over the base model's DiT
    config (`{"num_layers": 2}` is the base model's DiT with two blocks, its channels still the autoencoder's)."""
    import json

    from sana.registry import find_spec

    path = Path(arg).expanduser()
    if path.is_file():
        try:
            given = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"cannot read {arg} ({exc})") from None
        if not isinstance(given, dict):
            raise UsageError(f"--config {arg} is not a JSON object of DiT settings")
        own = model_dir / "transformer" / "config.json" if model_dir is not None else None
        if own is not None and own.is_file():
            return {**json.loads(own.read_text(encoding="utf-8")), **given}
        return given
    spec = find_spec(arg)
    if spec is None:
        raise UsageError(f"--config {arg} is neither a config.json nor a registry model", "see: sana models list")
    return dict(spec.transformer)
