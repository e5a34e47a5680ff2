"""Qwen3: a decoder-only language model (GQA with a fixed head_dim of 128, RMSNorm on queries and keys, SwiGLU)."""
from . import _qwen
from .base import LLM, FamilySpec


def _config(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int, tie: bool,
            head_dim: int = 128) -> dict:
    return dict(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, head_dim=head_dim, vocab_size=vocab, tie_word_embeddings=tie,
        rms_norm_eps=1e-6, rope_theta=1_000_000.0, hidden_act="silu", max_position_embeddings=40960,
        **_qwen.TEXT_TOKEN_IDS,
    )


# From the published config.json of Qwen/Qwen3-{0.6B,1.7B,4B,8B}.
SPEC = FamilySpec(
    name="qwen3",
    kind=LLM,
    config_class="Qwen3Config",
    model_class="Qwen3ForCausalLM",
    sizes={
        "tiny": _config(64, 128, 2, 4, 2, 320, tie=True, head_dim=16),
        "0.6b": _config(1024, 3072, 28, 16, 8, 151936, tie=True),
        "1.7b": _config(2048, 6144, 28, 16, 8, 151936, tie=True),
        "4b": _config(2560, 9728, 36, 32, 8, 151936, tie=True),
        "8b": _config(4096, 12288, 36, 32, 8, 151936, tie=False),
    },
    # the checkpoints' parameter counts (safetensors), which the model cards round to 0.6B/1.7B/4.0B/8.2B
    published_params={"0.6b": 0.596e9, "1.7b": 1.72e9, "4b": 4.02e9, "8b": 8.19e9},
    roles={
        "embeddings": r"(^|\.)embed_tokens$",
        "head": r"(^|\.)lm_head$",
        "language_backbone": r"(^|\.)model\.(layers|norm)(\.|$)",
    },
    write_processor=_qwen.write_qwen3_text,
    default_recipe="qwen3.yaml",
    inputs=_qwen.TEXT_INPUTS,
    gpu_sizes=("0.6b",),
)
