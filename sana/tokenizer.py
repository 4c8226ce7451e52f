"""Training a small tokenizer in Gemma's format (for tiny and nano models, benchmarks and tests).

Gemma's special ids are pad 0, eos 1, bos 2, unk 3, with byte fallback; transformers rebuilds a Gemma
tokenizer from `tokenizer.json`'s vocabulary and merges, so the tokenizer must be a real BPE of that shape to
survive a save and reload.
"""

from __future__ import annotations

from pathlib import Path


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
