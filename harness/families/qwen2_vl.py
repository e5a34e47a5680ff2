"""Qwen2-VL: a ViT with 2D RoPE, a 2x2 patch merger, and a Qwen2 language model with M-RoPE."""
from . import _qwen
from .base import VLM, FamilySpec
from .qwen2_5_vl import SPEC as _QWEN2_5_VL

# From the published config.json of Qwen/Qwen2-VL-{2B,7B}-Instruct.
_VISION = dict(
    depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, hidden_act="quick_gelu", patch_size=14,
    spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
)


def _config(text: dict, vision: dict, tie: bool) -> dict:
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    unit = head_dim // 16
    text = dict(
        rms_norm_eps=1e-6, rope_theta=1_000_000.0, hidden_act="silu", max_position_embeddings=32768,
        rope_scaling={"type": "mrope", "mrope_section": [2 * unit, 3 * unit, 3 * unit]},
        tie_word_embeddings=tie, **_qwen.TEXT_TOKEN_IDS, **text,
    )
    return dict(text_config=text, vision_config=vision, tie_word_embeddings=tie, **_qwen.VL_TOKEN_IDS)


SPEC = FamilySpec(
    name="qwen2-vl",
    kind=VLM,
    config_class="Qwen2VLConfig",
    model_class="Qwen2VLForConditionalGeneration",
    sizes={
        "tiny": _config(
            dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=384),
            dict(_VISION, depth=2, embed_dim=64, mlp_ratio=2, num_heads=2, hidden_size=128),
            tie=False,
        ),
        "2b": _config(
            dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936),
            dict(_VISION, hidden_size=1536),
            tie=True,
        ),
        "7b": _config(
            dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152064),
            dict(_VISION, hidden_size=3584),
            tie=False,
        ),
    },
    published_params={"2b": 2.21e9, "7b": 8.29e9},  # the model cards' "Model size"
    roles=_QWEN2_5_VL.roles,  # same module layout: visual (+ merger), language_model, lm_head
    write_processor=_qwen.write_vl,
    processor_class="Qwen2VLProcessor",
    default_recipe="qwen2-vl.yaml",
    inputs=_qwen.VL_INPUTS,
    gpu_sizes=("7b", "2b"),
)
