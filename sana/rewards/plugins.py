"""Rewards as plugins: one small interface, the built-in rewards, `path/file.py:function`, weighted sums.

A reward takes a batch of images [B, 3, H, W] (float in [0, 1], on the device the run gives it), their prompts
(B strings) and the prompts' metadata (B dicts: a JSONL line's other fields, else empty), and returns one score
an image: anything `torch.as_tensor` turns into B finite numbers. `--reward` names one or several:

    shapes                 the nano grammar's checker, partial credit per object (no weights to download)
    clip, pickscore        CLIPScore / PickScore through transformers' CLIP classes (`sana models pull NAME`);
                           NAME=DIR reads them from a local folder instead
    hpsv2, imagereward     when their packages are installed
    path/to/file.py:fn     a function of the user's: fn(images, prompts) or fn(images, prompts, metadata)

each optionally `:WEIGHT` (default 1); several, comma-separated, are summed with their weights. Everything that
can be checked without torch (names, files, the function's presence, packages, downloaded weights) is checked by
`check_rewards` before a run starts.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import SanaError, UsageError

BUILTIN_REWARDS = {
    "shapes": "the nano shapes grammar's analytic checker (partial credit per object)",
    "clip": "CLIPScore: cosine similarity of CLIP ViT-L/14 image and text embeddings",
    "pickscore": "PickScore v1: a CLIP ViT-H/14 preference model",
    "hpsv2": "HPSv2.1 (needs the hpsv2 package)",
    "imagereward": "ImageReward v1.0 (needs the image-reward package)",
}
REWARD_PACKAGES = {"hpsv2": ("hpsv2", "pip install hpsv2x"), "imagereward": ("ImageReward", "pip install image-reward")}
_PLUGIN = re.compile(r"(?P<path>.+\.py):(?P<function>[A-Za-z_]\w*)(?::(?P<weight>[^:]+))?")
_NAME = re.compile(r"\s*[A-Za-z_][\w-]*\s*")  # what `NAME:WEIGHT` has before the colon (no path, no =folder)


class RewardError(SanaError):
    """A reward that failed, or answered something other than one finite score an image."""


@dataclass(frozen=True)
class RewardTerm:
    """One `--reward` item."""

    name: str  # a built-in name, or the plugin's function name
    weight: float = 1.0
    path: str | None = None  # a plugin's file
    model_dir: str | None = None  # clip / pickscore from a local folder

    @property
    def label(self) -> str:
        return self.name


# -- parsing and checks (no torch) ----------------------------------------------------------------------------

def parse_rewards(text: str) -> list[RewardTerm]:
    """`NAME[=DIR][:WEIGHT],...` and `path/file.py:function[:WEIGHT]` items -> terms; bad syntax is a UsageError."""
    terms: list[RewardTerm] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        plugin = _PLUGIN.fullmatch(item)
        if plugin:
            weight = _weight(plugin["weight"], item) if plugin["weight"] else 1.0
            terms.append(RewardTerm(plugin["function"], weight, path=plugin["path"]))
            continue
        spec, weight_text = item, None
        head, sep, tail = item.rpartition(":")
        # A colon ends a weight after a bare name, or before a number; a folder may hold colons (`clip=C:\models`).
        if sep and (_is_number(tail) or _NAME.fullmatch(head)):
            item, weight_text = head, tail
        name, _, folder = item.partition("=")
        name = name.strip().lower()
        if name not in BUILTIN_REWARDS:
            import difflib

            close = difflib.get_close_matches(name, BUILTIN_REWARDS, n=1)
            hint = f"did you mean {close[0]}?" if close else f"use {', '.join(BUILTIN_REWARDS)} or path/file.py:function"
            raise UsageError(f"unknown reward '{name}'", hint)
        if folder and name not in ("clip", "pickscore"):
            raise UsageError(f"--reward {name}={folder}: only clip and pickscore read a local folder")
        weight = _weight(weight_text, spec) if weight_text is not None else 1.0
        terms.append(RewardTerm(name, weight, model_dir=folder or None))
    if not terms:
        raise UsageError("--reward names no reward", f"use {', '.join(BUILTIN_REWARDS)} or path/file.py:function")
    labels = [t.label for t in terms]
    if len(set(labels)) != len(labels):
        raise UsageError(f"--reward names {max(labels, key=labels.count)} twice", "give each reward once, with its weight")
    return terms


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _weight(text: str, item: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"reward weight '{text}' in '{item}' is not a number") from None
    if not math.isfinite(value) or value == 0:
        raise UsageError(f"reward weight '{text}' in '{item}' must be a finite non-zero number")
    return value


def check_rewards(terms: list[RewardTerm]) -> None:
    """Everything knowable before torch loads: plugin files and functions, packages, downloaded weights."""
    for term in terms:
        if term.path is not None:
            _check_plugin(Path(term.path).expanduser(), term.name)
        elif term.name in REWARD_PACKAGES:
            module, install = REWARD_PACKAGES[term.name]
            if importlib.util.find_spec(module) is None:
                raise UsageError(f"--reward {term.name} needs the {module} package, which is not installed", install)
        elif term.name in ("clip", "pickscore"):
            from .models import locate_reward_model

            locate_reward_model(term.name, term.model_dir)


def with_absolute_paths(text: str) -> str:
    """`--reward` with each plugin file and reward-model folder absolute, so a run's record works from any folder;
    items without a path stay as typed."""
    items = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        (term,) = parse_rewards(item)
        if term.path is None and term.model_dir is None:
            items.append(item)
            continue
        weight = "" if term.weight == 1.0 else f":{term.weight!r}"
        if term.path is not None:
            items.append(f"{Path(term.path).expanduser().resolve()}:{term.name}{weight}")
        else:
            items.append(f"{term.name}={Path(term.model_dir).expanduser().resolve()}{weight}")
    return ",".join(items)


def same_rewards(recorded: str, given: str) -> bool:
    """Whether two `--reward` texts name the same rewards, weights and files, however each path is spelled."""
    try:
        return parse_rewards(with_absolute_paths(recorded)) == parse_rewards(with_absolute_paths(given))
    except UsageError:
        return recorded == given


PLUGIN_SIGNATURE = "fn(images, prompts) or fn(images, prompts, metadata)"


def metadata_passing(positional: list[str], required: int, var_positional: bool, keyword_only: list[str],
                     required_keyword_only: list[str]) -> str:
    """How a plugin function is called, from its parameters: "positional" (images, prompts, metadata), "keyword"
    (metadata=...) or "none" (images, prompts). ValueError saying what it takes when it fits neither form."""
    unfilled = [name for name in required_keyword_only if name != "metadata"]
    if unfilled:
        raise ValueError(f"its keyword-only argument '{unfilled[0]}' has no default")
    if not var_positional and len(positional) < 2:
        raise ValueError(f"it takes ({', '.join(positional)})" if positional else "it takes no positional arguments")
    if required > 3:
        raise ValueError(f"it needs {required} positional arguments ({', '.join(positional[:required])})")
    if var_positional or len(positional) >= 3:
        return "positional"
    return "keyword" if "metadata" in keyword_only else "none"


def _ast_metadata_passing(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """`metadata_passing` of a function's definition, read without running it; None where a decorator may give it
    another signature."""
    if node.decorator_list:
        return None
    args = node.args
    positional = [a.arg for a in (*args.posonlyargs, *args.args)]
    keyword_only = [a.arg for a in args.kwonlyargs]
    required_keyword_only = [a.arg for a, default in zip(args.kwonlyargs, args.kw_defaults) if default is None]
    return metadata_passing(positional, len(positional) - len(args.defaults), args.vararg is not None, keyword_only,
                            required_keyword_only)


def _check_plugin(path: Path, function: str) -> None:
    """The file exists, parses, and defines `function` at its top level, taking what a reward is given: read,
    never run."""
    if not path.is_file():
        raise UsageError(f"reward plugin not found: {path}", "give path/to/file.py:function")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError) as exc:
        raise UsageError(f"cannot read the reward plugin {path} ({type(exc).__name__}: {exc})") from None
    defined = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if function not in defined:
        names = ", ".join(sorted(defined)) or "none"
        raise UsageError(f"{path} defines no function '{function}' at its top level", f"functions there: {names}")
    try:
        _ast_metadata_passing(defined[function])
    except ValueError as exc:
        raise UsageError(f"the reward {path.name}:{function} does not take a reward's arguments: {exc}",
                         f"define it as {PLUGIN_SIGNATURE}") from None


# -- the rewards ----------------------------------------------------------------------------------------------

def to_uint8_arrays(images) -> list:
    """[B, 3, H, W] in [0, 1] -> B numpy uint8 arrays [H, W, 3] (what the checkers and processors take)."""
    import torch

    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return list(pixels.permute(0, 2, 3, 1).cpu().numpy())


class ShapesReward:
    """The nano grammar's checker with partial credit (`shapes_reward.shapes_score`), on a pool of workers."""

    def __init__(self, device=None):
        from .shapes import ShapesScorer

        self.scorer = ShapesScorer()

    def __call__(self, images, prompts: list[str], metadata: list[dict]):
        return self.submit(images, prompts, metadata)()

    def submit(self, images, prompts: list[str], metadata: list[dict]):
        """Hand the images to the checker's workers (one copy to the host, as uint8); returns what waits for the
        scores [B]."""
        import torch

        wait = self.scorer.submit(to_uint8_arrays(images), prompts)
        return lambda: torch.tensor(wait(), dtype=torch.float32)

    def close(self) -> None:
        self.scorer.close()


class PluginReward:
    """A function from a file, imported on its own (not on sys.path, not run as __main__)."""

    def __init__(self, path: str, function: str):
        path_obj = Path(path).expanduser().resolve()
        _check_plugin(path_obj, function)
        spec = importlib.util.spec_from_file_location(f"sana_reward_plugin_{path_obj.stem}", path_obj)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise RewardError(f"the reward plugin {path_obj.name} failed to load ({type(exc).__name__}: {exc})") from None
        self.fn = getattr(module, function, None)
        if not callable(self.fn):
            raise RewardError(f"{path_obj.name}:{function} is not a function after loading")
        kind = inspect.Parameter
        params = list(inspect.signature(self.fn).parameters.values())
        positional = [p for p in params if p.kind in (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD)]
        keyword_only = [p for p in params if p.kind is kind.KEYWORD_ONLY]
        try:
            self.metadata = metadata_passing(
                [p.name for p in positional], sum(p.default is kind.empty for p in positional),
                any(p.kind is kind.VAR_POSITIONAL for p in params), [p.name for p in keyword_only],
                [p.name for p in keyword_only if p.default is kind.empty])
        except ValueError as exc:
            raise RewardError(f"the reward {path_obj.name}:{function} does not take a reward's arguments: {exc}",
                              f"define it as {PLUGIN_SIGNATURE}") from None

    def __call__(self, images, prompts: list[str], metadata: list[dict]):
        if self.metadata == "positional":
            return self.fn(images, prompts, metadata)
        if self.metadata == "keyword":
            return self.fn(images, prompts, metadata=metadata)
        return self.fn(images, prompts)


def load_reward(term: RewardTerm, device):
    """The reward object for one term, its weights loaded on `device`."""
    if term.path is not None:
        return PluginReward(term.path, term.name)
    if term.name == "shapes":
        return ShapesReward(device)
    from . import models

    return models.load(term.name, term.model_dir, device)


class RewardSet:
    """The weighted sum of the terms' rewards; each part checked to be one finite score an image."""

    def __init__(self, terms: list[RewardTerm], device):
        self.terms = terms
        self.rewards = [load_reward(t, device) for t in terms]

    @property
    def labels(self) -> list[str]:
        return [t.label for t in self.terms]

    def __call__(self, images, prompts: list[str], metadata: list[dict]):
        """images [B, 3, H, W] in [0, 1] -> (total [B], {label: scores [B]}), fp32 on the images' device."""
        return self.submit(images, prompts, metadata)()

    def submit(self, images, prompts: list[str], metadata: list[dict]):
        """Start scoring: rewards with a `submit` of their own (the shapes checker's worker pool) run on while the
        caller goes on, the others score now. Returns what finishes: () -> (total [B], {label: scores [B]})."""
        import torch

        batch, device = images.shape[0], images.device
        waits = []
        for term, reward in zip(self.terms, self.rewards):
            if hasattr(reward, "submit"):
                waits.append(_guarded(term, lambda: reward.submit(images, prompts, metadata)))
            else:
                value = _guarded(term, lambda: reward(images, prompts, metadata))
                waits.append(lambda value=value: value)

        def finish():
            parts = {}
            total = torch.zeros(batch, device=device)
            for term, wait in zip(self.terms, waits):
                scores = as_scores(_guarded(term, wait), batch, term.label).to(device)
                parts[term.label] = scores
                total = total + term.weight * scores
            return total, parts

        return finish

    def close(self) -> None:
        for reward in self.rewards:
            if hasattr(reward, "close"):
                reward.close()


def _guarded(term: RewardTerm, call):
    """call() without gradients; anything but a SanaError it raises becomes a one-line RewardError naming the term."""
    import torch

    try:
        with torch.no_grad():
            return call()
    except SanaError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise RewardError(f"reward '{term.label}' raised {type(exc).__name__}: {first}") from None


def as_scores(value, batch: int, label: str):
    """A reward's answer as fp32 [B]; anything else (wrong count or shape, NaN, inf, not numbers) is a RewardError."""
    import torch

    try:
        scores = torch.as_tensor(value.detach() if hasattr(value, "detach") else value).float()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise RewardError(f"reward '{label}' returned {type(value).__name__}, not numbers ({exc})",
                          f"return one score an image: a tensor or list of {batch} numbers") from None
    if scores.dim() == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if tuple(scores.shape) != (batch,):
        raise RewardError(f"reward '{label}' returned shape {tuple(scores.shape)} for {batch} images",
                          "return one score an image")
    bad = int((~torch.isfinite(scores)).sum())
    if bad:
        raise RewardError(f"reward '{label}' returned NaN or infinity for {bad} of {batch} images",
                          "return finite scores")
    return scores
