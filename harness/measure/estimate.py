"""A training step's memory budget as arithmetic: weights, adapters, gradients, optimizer state and activations.

Nothing is measured here. Weights come from the module inventory (4-bit Linear layers at NF4 + double-quant
bytes, everything else at 16 bits); adapters, gradients and optimizer state from the trainable count; activations
from the tensors autograd keeps for each transformer layer that carries LoRA, counted from the config:

    per token and layer, no checkpointing:  norms + normed outputs + attention + LoRA dropout + MLP
      norms           2 x input kept for backward (4 bytes: Qwen's RMSNorm computes in float32; LayerNorm: e bytes)
      normed outputs  2 x e*h (the input shared by q/k/v and by the MLP's first projections)
      attention       e*(5h + kv): RoPE inputs of q (h) and k (kv), SDPA's q, repeated k and v, its output
      LoRA dropout    (e + 1)*in per adapted module when dropout > 0 (its output and its boolean mask)
      MLP             e*3i gated (gate, its activation, up), e*2i plain (fc1 output and its activation)

where e is the compute dtype's bytes, h the hidden size, kv the key/value width and i the MLP width (about
34h + 2kv + 6i bytes for a bf16 Qwen layer, Korthikanti et al.'s 34 sbh). With gradient checkpointing each layer
keeps only its input (e*h per token) and one layer at a time is recomputed in full. A causal LM adds its logits:
e bytes each, their float32 copy and cross-entropy's float32 log-softmax. Layers without LoRA (a frozen vision
tower) keep nothing: no tensor there needs a gradient. DoRA is not modelled: it also keeps each adapted layer's
base output for its magnitude's gradient, so for DoRA the estimate is a floor (H200, CLIP ViT-B/16 at batch 16:
1.42 GiB estimated, 2.19 measured). The figures are estimates to print beside measured ones, never a pass/fail
threshold.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from harness.families import DUAL_ENCODER, FamilySpec

from .memory import quantized_bytes

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# optimizer state per trainable parameter: AdamW's two moments in float32, or 8-bit (blockwise) in bitsandbytes'
OPTIMIZER_STATE_BYTES = {"adamw_torch": 8, "adamw": 8, "paged_adamw_32bit": 8, "paged_adamw_8bit": 2, "adamw_8bit": 2}
ADAPTER_BYTES = 4  # peft keeps LoRA weights (and so their gradients) in float32 on a 4-bit or 16-bit base
GATED_MLP = {"gate_proj", "up_proj", "down_proj"}
MLP_OUT = {"down_proj", "fc2"}  # adapted modules whose input is the MLP width, not the hidden size
# How close the estimate lands to a measured training-mode peak on the H200 records: 15%, or 128 MiB on small
# workloads (CLIP ViT-B/16 with checkpointing: 0.45 GiB estimated, 0.56 measured)
AGREEMENT, AGREEMENT_FLOOR_BYTES = 0.15, 128 * 2**20


def agrees(measured_bytes: float, estimated_bytes: float) -> bool:
    """Return whether an estimate is within AGREEMENT of a measured peak (or AGREEMENT_FLOOR_BYTES)."""
    return abs(measured_bytes - estimated_bytes) < max(AGREEMENT * measured_bytes, AGREEMENT_FLOOR_BYTES)


@dataclass(frozen=True)
class Stack:
    """A stack of identical transformer layers: its role, sizes, and tokens per sample."""

    role: str
    layers: int
    hidden: int
    kv: int
    intermediate: int
    gated: bool
    rms_norm: bool
    tokens: int


@dataclass(frozen=True)
class Estimate:
    """A training step's memory by part, in bytes."""

    weights_bytes: int
    adapters_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int

    @property
    def total_bytes(self) -> int:
        return (self.weights_bytes + self.adapters_bytes + self.gradients_bytes + self.optimizer_bytes
                + self.activations_bytes)

    def as_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes}


def _kv_width(config) -> int:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (getattr(config, "num_key_value_heads", None) or heads) * head_dim


def stacks(family: FamilySpec, config, seq_len: int, text_tokens: int | None = None) -> list[Stack]:
    """Return the model's layer stacks with their tokens per sample (CLIP: image patches + 1, and the captions)."""
    if family.kind == DUAL_ENCODER:
        v, t = config.vision_config, config.text_config
        patches = (v.image_size // v.patch_size) ** 2 + 1
        return [Stack("vision_tower", v.num_hidden_layers, v.hidden_size, v.hidden_size, v.intermediate_size,
                      False, False, patches),
                Stack("language_backbone", t.num_hidden_layers, t.hidden_size, t.hidden_size, t.intermediate_size,
                      False, False, text_tokens or t.max_position_embeddings)]
    t = config.get_text_config()
    return [Stack("language_backbone", t.num_hidden_layers, t.hidden_size, _kv_width(t), t.intermediate_size,
                  True, True, seq_len)]


def layer_bytes_per_token(stack: Stack, recipe) -> int:
    """Return the bytes one layer keeps for backward per token without checkpointing (see the module docstring)."""
    e = DTYPE_BYTES[recipe.quantization.compute_dtype]
    h, kv, i = stack.hidden, stack.kv, stack.intermediate
    norms = 2 * (4 if stack.rms_norm else e) * h
    normed = 2 * e * h
    attention = e * (5 * h + kv)
    mlp = e * (3 if stack.gated else 2) * i
    lora = 0
    if stack.role in recipe.lora.target_roles and recipe.lora.dropout > 0:
        lora = sum((e + 1) * (i if m in MLP_OUT else h) for m in recipe.lora.target_modules)
    return norms + normed + attention + mlp + lora


def activation_bytes(stacks_: list[Stack], recipe, batch_size: int, vocab: int | None) -> int:
    """Return the activations a training step keeps at its peak: every adapted stack's, plus a causal LM's logits."""
    e = DTYPE_BYTES[recipe.quantization.compute_dtype]
    total = 0
    for s in stacks_:
        if s.role not in recipe.lora.target_roles:
            continue  # frozen and without adapters: autograd keeps nothing for it
        per_layer = layer_bytes_per_token(s, recipe) * s.tokens * batch_size
        if recipe.training.gradient_checkpointing:
            total += s.layers * e * s.hidden * s.tokens * batch_size + per_layer
        else:
            total += s.layers * per_layer
    if vocab:
        language = next(s for s in stacks_ if s.role == "language_backbone")
        total += language.tokens * batch_size * vocab * (e + 4 + 4)
    return total


def weights_bytes(model, family: FamilySpec, recipe) -> int:
    """Return the weights' bytes of a model (meta or real) as the recipe loads it: 4-bit Linear layers outside
    keep_16bit at NF4 cost, everything else at 16 bits (the count of memory.inventory_bytes); with peft's
    prepare_model_for_kbit_training, the parameters that are not 4-bit at 32 bits (it upcasts them)."""
    import torch

    q = recipe.quantization
    upcast = q.load_in_4bit and recipe.training.prepare_for_kbit_training
    total, seen = 0, set()
    for name, module in model.named_modules():
        role = family.role_of(name)
        # transformers leaves the projection inside torch's MultiheadAttention 16-bit (torch reads its weight directly)
        quantize = (q.load_in_4bit and isinstance(module, torch.nn.Linear) and role not in q.keep_16bit
                    and not isinstance(module, torch.nn.modules.linear.NonDynamicallyQuantizableLinear))
        params = [(n, p, True) for n, p in module.named_parameters(recurse=False)]
        for pname, p, is_param in params + [(n, b, False) for n, b in module.named_buffers(recurse=False)]:
            if id(p) in seen:
                continue
            seen.add(id(p))
            if quantize and pname == "weight":
                total += quantized_bytes(p.numel(), q.double_quant)
            elif p.is_floating_point():
                total += p.numel() * (4 if upcast and is_param else 2)
            else:
                total += p.numel() * p.element_size()
    return total


def estimate(family: FamilySpec, config, recipe, weights: int, trainable_params: int, batch_size: int,
             seq_len: int, text_tokens: int | None = None) -> Estimate:
    """Return the memory estimate of a training step at batch_size, sequence seq_len (CLIP: text_tokens)."""
    optimizer = recipe.training.optimizer
    if optimizer not in OPTIMIZER_STATE_BYTES:
        from harness.util.errors import unknown

        raise unknown("optimizer (memory estimate)", optimizer, OPTIMIZER_STATE_BYTES)
    vocab = None if family.kind == DUAL_ENCODER else config.get_text_config().vocab_size
    acts = activation_bytes(stacks(family, config, seq_len, text_tokens), recipe, batch_size, vocab)
    return Estimate(weights, trainable_params * ADAPTER_BYTES, trainable_params * ADAPTER_BYTES,
                    trainable_params * OPTIMIZER_STATE_BYTES[optimizer], acts)


def meta_counts(family: FamilySpec, size: str, recipe) -> dict:
    """Return {config, weights_bytes, trainable_params, total_params} of a family size under a recipe, counted on
    the meta device (no weights allocated); total_params counts every base weight unquantized, LoRA not included."""
    from harness.model import lora
    from harness.model.load import meta_model
    from harness.model.synth import make_config

    config = make_config(family, size)
    model = meta_model(family, config)
    targets = lora.lora_targets(model, family, recipe)
    return {"config": config, "weights_bytes": weights_bytes(model, family, recipe),
            "trainable_params": lora.expected_trainable_params(model, targets, recipe),
            "total_params": sum(p.numel() for p in model.parameters())}


def from_meta(family: FamilySpec, size: str, recipe, batch_size: int, seq_len: int,
              text_tokens: int | None = None) -> Estimate:
    """Return the estimate for a family size under a recipe from its config alone (meta device, no weights)."""
    c = meta_counts(family, size, recipe)
    return estimate(family, c["config"], recipe, c["weights_bytes"], c["trainable_params"], batch_size, seq_len,
                    text_tokens)
