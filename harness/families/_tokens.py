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


def byte_level_tokenizer(specials: Sequence[str], chat_template: str, *, bos: str | None = None, eos: str | None = None,
                         pad: str | None = None, named: dict[str, str] | None = None, max_length: int = 32768):
    """Return a tiny byte-level BPE tokenizer (a tokenizer.json) with a family's real special tokens numbered from 256.

    Families whose published tokenizers are not Qwen2's byte-level BPE (Gemma's SentencePiece, Llama 3's, SmolLM2's)
    get this stand-in: the same special tokens, chat template and token attributes (named: e.g. image_token ->
    "<image>", which processors read from the tokenizer), and one byte per token for plain text.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(byte_alphabet())}
    # the special tokens are in the model's vocabulary too, so a tokenizer class that rebuilds the pipeline from it
    # (transformers 5's GemmaTokenizer, which SigLIP 2's processor names) finds its <unk> and <pad>
    vocab.update({tok: len(vocab) + i for i, tok in enumerate(specials)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    kwargs = {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("pad_token", pad)) if v}
    named = dict(named or {})
    # the published tokenizers return input_ids and attention_mask only (4.57's base class adds token_type_ids)
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=chat_template, model_max_length=max_length,
                                   extra_special_tokens=named, clean_up_tokenization_spaces=False,
                                   model_input_names=["input_ids", "attention_mask"], **kwargs)
