"""Qwen3-VL: a ViT with learned + 2D rotary positions and DeepStack taps, a 2x2 patch merger, and a Qwen3 language
model with interleaved M-RoPE."""
from . import _qwen
from .base import VLM, FamilySpec


def _vision(depth: int, hidden: int, intermediate: int, heads: int, out: int, deepstack: list[int], **kw) -> dict:
    return dict(depth=depth, hidden_size=hidden, intermediate_size=intermediate, num_heads=heads, out_hidden_size=out,
                deepstack_visual_indexes=deepstack, hidden_act="gelu_pytorch_tanh", patch_size=16, spatial_merge_size=2,
                temporal_patch_size=2, in_channels=3, **{"num_position_embeddings": 2304, **kw})


def _config(text: dict, vision: dict, tie: bool) -> dict:
    head_dim = text["head_dim"]
    unit = head_dim // 32  # mrope_section splits head_dim/2 as 24:20:20 at head_dim 128 (6:5:5 units of 4)
    text = {
        "rms_norm_eps": 1e-6, "hidden_act": "silu", "max_position_embeddings": 262144, "rope_theta": 5_000_000.0,
        "rope_scaling": {"rope_type": "default", "mrope_section": [6 * unit, 5 * unit, 5 * unit], "mrope_interleaved": True},
        "tie_word_embeddings": tie, "vocab_size": 151936, **_qwen.TEXT_TOKEN_IDS, **text,
    }
    return dict(text_config=text, vision_config=vision, tie_word_embeddings=tie, **_qwen.VL_TOKEN_IDS)


def _text(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int) -> dict:
    return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv_heads, head_dim=128)


_SMALL_VISION = dict(depth=24, hidden=1024, intermediate=4096, heads=16, deepstack=[5, 11, 17])  # 2B and 4B

# From the published config.json of Qwen/Qwen3-VL-{2B,4B,8B}-Instruct.
SPEC = FamilySpec(
    name="qwen3-vl",
    kind=VLM,
    config_class="Qwen3VLConfig",
    model_class="Qwen3VLForConditionalGeneration",
    sizes={
        "tiny": _config(
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, vocab_size=320),
            _vision(2, 64, 128, 2, 64, [0], num_position_embeddings=64),
            tie=True,
        ),
        "2b": _config(_text(2048, 6144, 28, 16, 8), _vision(out=2048, **_SMALL_VISION), tie=True),
        "4b": _config(_text(2560, 9728, 36, 32, 8), _vision(out=2560, **_SMALL_VISION), tie=True),
        "8b": _config(_text(4096, 12288, 36, 32, 8), _vision(27, 1152, 4304, 16, 4096, [8, 16, 24]), tie=False),
    },
    published_params={"2b": 2.13e9, "4b": 4.44e9, "8b": 8.77e9},  # the checkpoints' parameter counts (safetensors)
    roles={
        "projector": r"(^|\.)visual\.(merger|deepstack_merger_list)(\.|$)",
        "vision_tower": r"(^|\.)visual(\.|$)",
        "embeddings": r"(^|\.)embed_tokens$",
        "head": r"(^|\.)lm_head$",
        "language_backbone": r"(^|\.)language_model\.(layers|norm)(\.|$)",
    },
    write_processor=_qwen.write_qwen3_vl,
    processor_class="Qwen3VLProcessor",
    default_recipe="qwen3-vl.yaml",
    tiny_image_size=64,  # whole 32-pixel units (patch 16 x merge 2)
    inputs=_qwen.VL_INPUTS,
    gpu_sizes=("2b",),
)
