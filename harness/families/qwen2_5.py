"""Qwen2.5: a decoder-only language model (GQA, RoPE, SwiGLU)."""
from . import _qwen
from .base import LLM, FamilySpec


def _config(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int, tie: bool) -> dict:
    return dict(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab, tie_word_embeddings=tie,
        rms_norm_eps=1e-6, rope_theta=1_000_000.0, hidden_act="silu", max_position_embeddings=32768,
        **_qwen.TEXT_TOKEN_IDS,
    )


# From the published config.json of Qwen/Qwen2.5-{0.5B,1.5B,3B,7B}-Instruct.
SPEC = FamilySpec(
    name="qwen2.5",
    kind=LLM,
    config_class="Qwen2Config",
    model_class="Qwen2ForCausalLM",
    sizes={
        "tiny": _config(128, 256, 2, 4, 2, 384, tie=True),
        "0.5b": _config(896, 4864, 24, 14, 2, 151936, tie=True),
        "1.5b": _config(1536, 8960, 28, 12, 2, 151936, tie=True),
        "3b": _config(2048, 11008, 36, 16, 2, 151936, tie=True),
        "7b": _config(3584, 18944, 28, 28, 4, 152064, tie=False),
    },
    published_params={"0.5b": 0.49e9, "1.5b": 1.54e9, "3b": 3.09e9, "7b": 7.61e9},  # the model cards' "Number of Parameters"
    roles={
        "embeddings": r"(^|\.)embed_tokens$",
        "head": r"(^|\.)lm_head$",
        "language_backbone": r"(^|\.)model\.(layers|norm)(\.|$)",
    },
    write_processor=_qwen.write_text,
    default_recipe="qwen2.5.yaml",
    inputs=_qwen.TEXT_INPUTS,
    gpu_sizes=("7b", "0.5b"),
)
