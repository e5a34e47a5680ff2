"""Qwen2.5-VL: a windowed-attention ViT, a 2x2 patch merger, and a Qwen2.5 language model with M-RoPE."""
from . import _qwen
from .base import VLM, FamilySpec

# From the published config.json of Qwen/Qwen2.5-VL-{3B,7B}-Instruct.
_VISION = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, hidden_act="silu", patch_size=14,
    spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2, in_channels=3,
)


def _config(text: dict, vision: dict, tie: bool) -> dict:
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    unit = head_dim // 16  # mrope_section splits head_dim/2 as 2:3:3 ([16, 24, 24] at head_dim 128)
    text = dict(
        rms_norm_eps=1e-6, rope_theta=1_000_000.0, hidden_act="silu", max_position_embeddings=128000,
        rope_scaling={"type": "mrope", "mrope_section": [2 * unit, 3 * unit, 3 * unit]},
        tie_word_embeddings=tie, **_qwen.TEXT_TOKEN_IDS, **text,
    )
    return dict(text_config=text, vision_config=vision, tie_word_embeddings=tie, **_qwen.VL_TOKEN_IDS)


SPEC = FamilySpec(
    name="qwen2.5-vl",
    kind=VLM,
    config_class="Qwen2_5_VLConfig",
    model_class="Qwen2_5_VLForConditionalGeneration",
    sizes={
        "tiny": _config(
            dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=384),
            dict(_VISION, depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128,
                 fullatt_block_indexes=[1]),
            tie=False,
        ),
        "3b": _config(
            dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                 num_key_value_heads=2, vocab_size=151936),
            dict(_VISION, out_hidden_size=2048),
            tie=True,
        ),
        "7b": _config(
            dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152064),
            dict(_VISION, out_hidden_size=3584),
            tie=False,
        ),
    },
    published_params={"3b": 3.75e9, "7b": 8.29e9},  # the model cards' "Model size"
    roles={
        "projector": r"(^|\.)visual\.merger(\.|$)",
        "vision_tower": r"(^|\.)visual(\.|$)",
        "embeddings": r"(^|\.)embed_tokens$",
        "head": r"(^|\.)lm_head$",
        "language_backbone": r"(^|\.)(language_model|model)\.(layers|norm)(\.|$)",
    },
    write_processor=_qwen.write_vl,
    processor_class="Qwen2_5_VLProcessor",
    default_recipe="qwen2.5-vl.yaml",
    inputs=_qwen.VL_INPUTS,
    gpu_sizes=("7b", "3b"),
)
