"""A CLIP tokenizer built locally, for random-weight pipelines and the embedded default (nothing is downloaded).

CLIP's byte-level BPE with its real pre-tokenizer and special tokens, but a tiny vocabulary: the 256 byte symbols,
the same with the end-of-word marker `</w>`, a few merges of common English letter pairs, then `<|startoftext|>`
and `<|endoftext|>`. Words therefore split into letters and a few pairs; any text tokenizes (nothing is unknown).
The ids stay below 600, so the same tokenizer also drives the full-size random encoders (vocabulary 49408).
"""
from __future__ import annotations


#: Merges applied in order; each must join two symbols already in the vocabulary.
_MERGES = (("t", "h"), ("i", "n"), ("a", "n"), ("e", "r"), ("o", "n"), ("r", "e"), ("th", "e</w>"),
           ("e", "d</w>"), ("o", "f</w>"), ("in", "g</w>"), ("an", "d</w>"))
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table, in CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def tiny_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary (symbol -> id) and merges of the tiny tokenizer."""
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in _MERGES] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, list(_MERGES)


def special_ids() -> dict[str, int]:
    """bos/eos/pad token ids of the tiny tokenizer (pad = eos, as in SD 1.x's tokenizer)."""
    vocab, _ = tiny_vocab()
    return {"bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS]}


def tiny_clip_tokenizer():
    """A transformers CLIPTokenizer over the tiny vocabulary (needs `transformers`, not torch)."""
    from transformers import CLIPTokenizer

    vocab, merges = tiny_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)


