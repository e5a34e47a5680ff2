"""Tiny byte-level BPE tokenizers with a family's real special tokens, built locally (no hub)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Sequence


def byte_alphabet() -> list[str]:
    """Return the 256 printable characters byte-level BPE uses for the bytes 0..255, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def load_bpe_tokenizer(vocab: dict[str, int], tokenizer_config: dict):
    """Return a transformers tokenizer read from vocab.json + merges.txt, the layout of real checkpoints."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
        return AutoTokenizer.from_pretrained(folder)


def added_tokens_decoder(specials: Sequence[str], first_id: int) -> dict[str, dict]:
    """Return a tokenizer_config added_tokens_decoder entry for special tokens numbered from first_id."""
    return {
        str(first_id + i): {
            "content": tok, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
        for i, tok in enumerate(specials)
    }
