"""Qwen3.5: a Qwen3-VL-style vision tower and merger, and a hybrid language model: three Gated DeltaNet (linear
attention) layers to every gated full-attention layer. Its architecture exists only in transformers 5."""
from . import _qwen
from .base import VLM, FamilySpec


def _config(text: dict, vision: dict) -> dict:
    layers = text["num_hidden_layers"]
    text = {"hidden_act": "silu", "rms_norm_eps": 1e-6, "max_position_embeddings": 262144, "vocab_size": 248320,
            "attention_bias": False, "tie_word_embeddings": False,
            "layer_types": ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)],
            "rope_parameters": {"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25,
                                "mrope_interleaved": True, "mrope_section": [11, 11, 10]},
            "linear_conv_kernel_dim": 4, **_qwen.TEXT_TOKEN_IDS, **text}
    vision = {"hidden_act": "gelu_pytorch_tanh", "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
              "in_channels": 3, "num_position_embeddings": 2304, **vision}
    return dict(text_config=text, vision_config=vision, tie_word_embeddings=False, **_qwen.VL_TOKEN_IDS)


# From the published config.json of Qwen/Qwen3.5-27B.
SPEC = FamilySpec(
    name="qwen3.5",
    kind=VLM,
    config_class="Qwen3_5Config",
    model_class="Qwen3_5ForConditionalGeneration",
    sizes={
        "tiny": _config(
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=32, vocab_size=320,
                 # 32 value heads (as many beta and decay gates): bitsandbytes' CPU kernel packs 32 output rows
                 linear_num_key_heads=32, linear_num_value_heads=32, linear_key_head_dim=4, linear_value_head_dim=4,
                 rope_parameters={"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25,
                                  "mrope_interleaved": True, "mrope_section": [2, 1, 1]}),
            dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=64,
                 num_position_embeddings=64),
        ),
        "27b": _config(
            dict(hidden_size=5120, intermediate_size=17408, num_hidden_layers=64, num_attention_heads=24,
                 num_key_value_heads=4, head_dim=256, linear_num_key_heads=16, linear_num_value_heads=48,
                 linear_key_head_dim=128, linear_value_head_dim=128),
            dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=5120),
        ),
    },
    # No count to compare with: the model card says 27B, and the checkpoint also holds a multi-token-prediction layer
    # that transformers does not build; `list` shows the count computed here.
    published_params={},
    roles={
        "projector": r"(^|\.)visual\.merger(\.|$)",
        "vision_tower": r"(^|\.)visual(\.|$)",
        "embeddings": r"(^|\.)embed_tokens$",
        "head": r"(^|\.)lm_head$",
        "language_backbone": r"(^|\.)language_model\.(layers|norm)(\.|$)",
    },
    write_processor=_qwen.write_qwen3_vl,
    processor_class="Qwen3VLProcessor",
    default_recipe="qwen3.5.yaml",
    tiny_image_size=64,
    inputs=_qwen.VL_INPUTS,
    min_transformers="5.2",
)
