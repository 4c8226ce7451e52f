"""Gemma tokenizers: loading one from `tokenizer.json` with the `tokenizers` library alone, and training a small one
in Gemma's format (for tiny and nano models, benchmarks and tests).

Loading gives the ids and attention masks transformers' `AutoTokenizer` gives for a Gemma tokenizer folder, for the
calls SANA makes (`padding="max_length"`, `truncation=True`, `max_length`, special tokens added), without importing
transformers. It does what transformers 5 does with such a folder: the BPE from `tokenizer.json` with Gemma's
normalizer (spaces become "▁"), byte fallback and fused unknowns; the added tokens of `tokenizer.json` (those of
`tokenizer_config.json` must agree) and the named special tokens; BOS/EOS as `tokenizer.json`'s post-processor adds
them (transformers ignores `add_bos_token` / `add_eos_token` beside a `tokenizer.json`). A folder
without `tokenizer.json`, or with another tokenizer class, is left to transformers (`load_tokenizer`).

Gemma's special ids are pad 0, eos 1, bos 2, unk 3, with byte fallback; transformers rebuilds a Gemma
tokenizer from `tokenizer.json`'s vocabulary and merges, so a trained tokenizer must be a real BPE of that shape to
survive a save and reload.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import SanaError

GEMMA_CLASSES = ("GemmaTokenizer", "GemmaTokenizerFast")
# transformers' GemmaTokenizer defaults, for names its config leaves out.
DEFAULT_SPECIALS = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
                    "mask_token": "<mask>"}


class NotNative(Exception):
    """The folder is not one this module reproduces exactly; transformers loads it."""


@dataclass
class Tokens:
    """A tokenised batch: `input_ids` and `attention_mask` [B, N] (int64; mask 1 = token, 0 = padding)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor


class GemmaTokenizer:
    """A Gemma tokenizer with the part of transformers' interface SANA uses: `__call__` on a batch, `encode`,
    `pad_token_id` / `bos_token_id` / `eos_token_id`, `padding_side`, `len()`."""

    def __init__(self, backend, *, specials: dict[str, str], padding_side: str = "left",
                 truncation_side: str = "right"):
        self.backend = backend  # a `tokenizers.Tokenizer`; its truncation and padding are set per call
        self.specials = specials  # "bos_token" -> "<bos>", ...
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self._lock = threading.Lock()  # truncation and padding are state of the backend

    @classmethod
    def from_folder(cls, folder: Path) -> "GemmaTokenizer":
        """Load a Gemma tokenizer folder; NotNative where transformers must, SanaError for unreadable files."""
        folder = Path(folder)
        if not (folder / "tokenizer.json").is_file():
            raise NotNative("no tokenizer.json")
        config = _read_optional_json(folder / "tokenizer_config.json")
        if config.get("tokenizer_class", GEMMA_CLASSES[0]) not in GEMMA_CLASSES:
            raise NotNative(f"tokenizer class {config.get('tokenizer_class')}")
        from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers

        try:
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # the Rust side raises plain Exceptions for unreadable files
            raise SanaError(f"cannot read {folder / 'tokenizer.json'}: {str(exc).splitlines()[0]}",
                            "the tokenizer is corrupt; pull the model again") from None
        if type(backend.model).__name__ != "BPE":
            raise NotNative(f"a {type(backend.model).__name__} model")

        # 1. Gemma's pipeline, as transformers' GemmaTokenizer rebuilds it around the vocabulary and merges.
        model = backend.model
        model.byte_fallback, model.fuse_unk, model.dropout, model.ignore_merges = True, True, None, False
        model.continuing_subword_prefix, model.end_of_word_suffix = None, None
        backend.normalizer = normalizers.Replace(" ", "\u2581")
        backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
        backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
        baked_padding, baked_truncation = backend.padding, backend.truncation  # sides transformers defaults to
        backend.no_truncation()
        backend.no_padding()

        # 2. Added tokens: tokenizer.json's; a tokenizer_config.json that lists others is transformers' to load.
        specials = dict(DEFAULT_SPECIALS)
        listed = config.get("added_tokens_decoder")
        if listed is not None:
            mine = {i: _token_shape(t) for i, t in backend.get_added_tokens_decoder().items()}
            if {int(i): _token_shape(t) for i, t in listed.items()} != mine:
                raise NotNative("tokenizer_config.json lists other added tokens than tokenizer.json")
        else:  # transformers reads special_tokens_map.json only then
            specials.update(_token_names(_read_optional_json(folder / "special_tokens_map.json")))
        specials.update(_token_names(config))
        added = {token.content for token in backend.get_added_tokens_decoder().values()}
        missing = [t for t in dict.fromkeys(specials.values()) if t not in added]
        if missing:
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])

        # 3. BOS / EOS: as tokenizer.json's post-processor adds them, kept as it is. transformers 5 drops
        # tokenizer_config.json's `add_bos_token` / `add_eos_token` beside a tokenizer.json, and adds neither where
        # the file has no post-processor.
        padding_side = config.get("padding_side") or (baked_padding or {}).get("direction") or "left"
        truncation_side = config.get("truncation_side") or (baked_truncation or {}).get("direction") or "right"
        return cls(backend, specials=specials, padding_side=padding_side, truncation_side=truncation_side)

    # -- ids -----------------------------------------------------------------------------------------------

    def _id(self, name: str) -> int | None:
        token = self.specials.get(name)
        return self.backend.token_to_id(token) if token is not None else None

    @property
    def pad_token_id(self) -> int | None:
        return self._id("pad_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._id("eos_token")

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    # -- encoding ------------------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The ids of `text`, uncut and unpadded."""
        with self._lock:
            self.backend.no_truncation()
            self.backend.no_padding()
            return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, texts: str | list[str], *, padding: bool | str = False, max_length: int | None = None,
                 truncation: bool = False, add_special_tokens: bool = True, return_tensors: str = "pt") -> Tokens:
        """Tokenise a batch: cut to `max_length` (special tokens included) when `truncation`, padded on
        `padding_side` to `max_length` ("max_length") or to the longest row (True / "longest")."""
        if return_tensors != "pt":
            raise ValueError("only return_tensors='pt' is supported")
        if padding not in (False, True, "longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding={padding!r} is not supported")
        if (padding == "max_length" or truncation) and max_length is None:
            raise ValueError("max_length is needed for padding='max_length' and truncation")
        batch = [texts] if isinstance(texts, str) else list(texts)
        with self._lock:
            if truncation:
                self.backend.enable_truncation(max_length, stride=0, strategy="longest_first",
                                               direction=self.truncation_side)
            else:
                self.backend.no_truncation()
            if padding in (False, "do_not_pad"):
                self.backend.no_padding()
            else:
                self.backend.enable_padding(direction=self.padding_side, pad_id=self.pad_token_id or 0,
                                            pad_type_id=0, pad_token=self.specials.get("pad_token", "<pad>"),
                                            length=max_length if padding == "max_length" else None)
            encodings = self.backend.encode_batch(batch, add_special_tokens=add_special_tokens)
        if len({len(e.ids) for e in encodings}) > 1:
            raise ValueError("rows of different lengths need padding to make one tensor")
        return Tokens(torch.tensor([e.ids for e in encodings], dtype=torch.long),
                      torch.tensor([e.attention_mask for e in encodings], dtype=torch.long))


def load_tokenizer(folder: Path):
    """Our `GemmaTokenizer` when the folder holds a Gemma `tokenizer.json`, else transformers' AutoTokenizer."""
    try:
        return GemmaTokenizer.from_folder(folder)
    except NotNative:
        pass
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise SanaError(f"cannot load the tokenizer from {folder}: {str(exc).splitlines()[0]}") from None


def _read_optional_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SanaError(f"{path} is not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def _token_names(config: dict) -> dict[str, str]:
    """The named special tokens of a config (strings, or dicts with "content")."""
    names = {}
    for key in DEFAULT_SPECIALS:
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            names[key] = value
    return names


def _token_shape(token) -> tuple:
    """What of an added token decides the ids (its content and how it matches), from an AddedToken or a dict."""
    get = token.get if isinstance(token, dict) else lambda name, default=None: getattr(token, name, default)
    return (get("content"), bool(get("single_word", False)), bool(get("lstrip", False)), bool(get("rstrip", False)),
            bool(get("normalized", True)))


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------

def train_gemma_style_bpe(corpus: list[str], path: Path, vocab_size: int = 700):
    """Train a byte-fallback BPE on `corpus`, save it at `path` as a Gemma tokenizer, and return it reloaded."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import AutoTokenizer, GemmaTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                        show_progress=False))
    fast = GemmaTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                              unk_token="<unk>", add_bos_token=True, add_eos_token=False)
    fast.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
