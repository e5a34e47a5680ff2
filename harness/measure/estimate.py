"""A training step's peak GPU memory as arithmetic, term by term, from the config and the recipe (nothing measured).

The peak is the larger of the step's two high points, on top of what lives through the whole step:

    peak = weights + adapters + optimizer state + inputs + max(backward peak, optimizer-step peak)

Each term, and why it has the size it has (e: the bytes of the compute dtype; h, kv, i: hidden, key/value and MLP
widths; T: tokens of a stack per sample; V: vocabulary; P: trainable parameters):

  weights          the module inventory: 4-bit Linear layers outside keep_16bit at NF4 + double-quant bytes, everything
                   else at 16 bits (32 where peft's prepare_model_for_kbit_training upcasts them).
  adapters         P x 4: peft keeps LoRA (and DoRA's magnitude) in float32 on a 4-bit or 16-bit base.
  optimizer state  P x 8 (AdamW's two float32 moments) or P x 2 (bitsandbytes' 8-bit blockwise state).
  inputs           the batch on the GPU: int64 input ids, attention mask and labels (24 bytes a token) and the float32
                   pixel values of the images (the processor's patches, 3 x 2 x 14 x 14 values each for Qwen).
  backward peak    reached as the loss's backward starts, before any LoRA gradient exists (zero_grad(set_to_none)
                   runs at the start of a step): the activations autograd keeps, plus the larger of
                   logits          V x 12 bytes a token: the loss upcasts the logits to float32 and keeps the float32
                                   log-softmax (4); its backward adds the log-softmax's gradient (4) and the float32
                                   gradient of the logits (4). The 16-bit logits (2) are freed by then.
                   layer backward  one layer's saved tensors (recomputed, with checkpointing) plus its backward's
                                   MLP-wide gradient buffers: 4 x e x i a token (the gradients of the product, of its two
                                   factors and of the activation's input live at once).
  activations      per token and layer of a stack that carries autograd's graph:
                     norms      2 x 4h (RMSNorm computes in float32 and keeps its float32 input) or 2 x e*h (LayerNorm)
                     attention  e x (2h + 2kv): SDPA keeps q, k, v and its output (k, v not repeated for GQA); RoPE's
                                multiplications keep only cos and sin
                     MLP        e x 3i gated (the gate's output, its activation, up) or e x 2i plain (fc1's output and
                                QuickGELU's sigmoid); frozen 4-bit and 16-bit Linear layers keep no input
                     LoRA       per adapted module (4 + 1) x in + 4r: peft casts the input to float32 for lora_A, which
                                keeps the dropout's float32 output (the 1 is the dropout's mask; no dropout: 4 x in)
                     DoRA       per adapted module 8 x out more (the float32 LoRA and base results kept for the
                                magnitude's gradient) and, with dropout, the float32 dequantized weight (4 x in x out,
                                whatever the batch) that the base result is recomputed from
                   With gradient checkpointing a layer keeps only its input (e x h a token) and one layer at a time is
                   recomputed in backward. Which stacks carry the graph: those with LoRA; and, under checkpointing with
                   transformers >= 5, a frozen vision tower too, since enable_input_require_grads hooks the input
                   embeddings of every sub-model (its patch embedding included) and so its blocks are checkpointed
                   like the language model's. A frozen tower otherwise keeps nothing. With
                   prepare_model_for_kbit_training the norms are float32, so the hidden states that leave them and
                   everything computed from them are float32 too (e = 4).
  optimizer-step peak  P x 4 of gradients, plus torch AdamW's float32 temporary (the denominator sqrt(v): P x 4;
                   bitsandbytes' fused kernels make none).

Outside the step, and so outside what the records measure (their figures are taken from the process's baseline):
the CUDA context (not allocated through PyTorch's allocator) and cuBLAS's workspaces; harness.measure.fit adds them
when it says whether a step fits a card.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from harness.families import DUAL_ENCODER, VLM, FamilySpec

from .memory import quantized_bytes

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# optimizer state per trainable parameter: AdamW's two moments in float32, or 8-bit (blockwise) in bitsandbytes'
OPTIMIZER_STATE_BYTES = {"adamw_torch": 8, "adamw": 8, "paged_adamw_32bit": 8, "paged_adamw_8bit": 2, "adamw_8bit": 2}
# float32 temporaries of the optimizer's step per trainable parameter: torch's foreach AdamW materialises sqrt(v)
OPTIMIZER_STEP_TEMP_BYTES = {"adamw_torch": 4, "adamw": 4}
ADAPTER_BYTES = 4  # peft keeps LoRA weights (and so their gradients) in float32 on a 4-bit or 16-bit base
LOGIT_BYTES = 12  # per logit at the loss's backward: float32 log-softmax, its gradient, the logits' float32 gradient
MLP_GRAD_BUFFERS = 4  # MLP-wide gradient tensors alive at once in a layer's backward
TOKEN_INPUT_BYTES = 24  # int64 input_ids, attention_mask and labels
MLP_IN = {"down_proj", "fc2"}  # adapted modules whose input is the MLP width
MLP_OUT = {"gate_proj", "up_proj", "fc1"}  # adapted modules whose output is the MLP width
KV_OUT = {"k_proj", "v_proj"}
# How close the estimate must land to every training-mode peak of the GPU records (tests/smoke/test_report.py)
AGREEMENT = 0.10


def agrees(measured_bytes: float, estimated_bytes: float) -> bool:
    """Return whether an estimate is within AGREEMENT of a measured peak."""
    return abs(measured_bytes - estimated_bytes) <= AGREEMENT * measured_bytes


@dataclass(frozen=True)
class Stack:
    """A stack of identical transformer layers: its role, sizes, tokens per sample, and whether it keeps a graph."""

    role: str
    layers: int
    hidden: int
    kv: int
    intermediate: int
    gated: bool
    rms_norm: bool
    tokens: int
    adapted: bool = False  # LoRA on it
    graph: bool = False  # autograd records it: adapted, or a hooked frozen tower under checkpointing


@dataclass(frozen=True)
class Estimate:
    """A training step's memory by part, in bytes; total_bytes is its peak (see the module docstring)."""

    weights_bytes: int
    adapters_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int  # kept for backward, at the backward peak (the layer-backward buffers included)
    logits_bytes: int = 0  # the loss's float32 working set at the backward peak (0 when the layer backward is larger)
    inputs_bytes: int = 0
    optimizer_step_bytes: int = 0  # the optimizer step's temporaries

    @property
    def backward_peak_bytes(self) -> int:
        return self.activations_bytes + self.logits_bytes

    @property
    def step_peak_bytes(self) -> int:
        return self.gradients_bytes + self.optimizer_step_bytes

    @property
    def static_bytes(self) -> int:
        return self.weights_bytes

    @property
    def total_bytes(self) -> int:
        return (self.weights_bytes + self.adapters_bytes + self.optimizer_bytes + self.inputs_bytes
                + max(self.backward_peak_bytes, self.step_peak_bytes))

    def as_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes}


def _kv_width(config) -> int:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (getattr(config, "num_key_value_heads", None) or heads) * head_dim


def towers_keep_graph(transformers_version: str | None = None) -> bool:
    """Return whether gradient checkpointing makes a frozen vision tower keep autograd's graph: transformers >= 5
    hooks the input embeddings of every sub-model (None: the installed version)."""
    if transformers_version is None:
        import transformers

        transformers_version = transformers.__version__
    return int(str(transformers_version).split(".")[0]) >= 5


def vision_patches(vision_config, image_size: int) -> int:
    """Return the patches a Qwen vision tower sees for one square image of image_size pixels (the processor's
    smart_resize: each side rounded to a multiple of patch x merge)."""
    factor = vision_config.patch_size * vision_config.spatial_merge_size
    side = max(factor, round(image_size / factor) * factor)
    return (side // vision_config.patch_size) ** 2


def _vision_stack(v, tokens: int, adapted: bool, graph: bool) -> Stack:
    hidden = getattr(v, "embed_dim", None) or v.hidden_size
    intermediate = getattr(v, "intermediate_size", None) or int(hidden * v.mlp_ratio)
    gated = getattr(v, "hidden_act", "") in ("silu", "swiglu")
    # Qwen2.5-VL's gated (SiLU) vision blocks use RMSNorm; Qwen2-VL's and CLIP's QuickGELU blocks use LayerNorm
    return Stack("vision_tower", getattr(v, "depth", None) or v.num_hidden_layers, hidden, hidden, intermediate,
                 gated, gated, tokens, adapted, graph)


def stacks(family: FamilySpec, config, seq_len: int, text_tokens: int | None = None, recipe=None,
           image_size: int | None = None, transformers_version: str | None = None) -> list[Stack]:
    """Return the model's layer stacks with their tokens per sample (CLIP: image patches + 1, and the captions;
    a VLM: its vision tower's patches, and seq_len tokens of the language model, image placeholders included)."""
    roles = set(recipe.lora.target_roles) if recipe else {"language_backbone"}
    checkpointing = bool(recipe and recipe.training.gradient_checkpointing)
    if family.kind == DUAL_ENCODER:
        v, t = config.vision_config, config.text_config
        # SigLIP 2 (NaFlex) sees up to num_patches patches and no class token; CLIP its grid plus a class token
        patches = getattr(v, "num_patches", None) or (v.image_size // v.patch_size) ** 2 + 1
        vision = _vision_stack(v, patches, "vision_tower" in roles, "vision_tower" in roles)
        return [vision, Stack("language_backbone", t.num_hidden_layers, t.hidden_size, t.hidden_size,
                              t.intermediate_size, False, False, text_tokens or t.max_position_embeddings,
                              "language_backbone" in roles, "language_backbone" in roles)]
    t = config.get_text_config()
    out = [Stack("language_backbone", t.num_hidden_layers, t.hidden_size, _kv_width(t), t.intermediate_size,
                 True, True, seq_len, "language_backbone" in roles, "language_backbone" in roles)]
    if family.kind == VLM and image_size:
        adapted = "vision_tower" in roles
        graph = adapted or (checkpointing and towers_keep_graph(transformers_version))
        out.append(_vision_stack(config.vision_config, vision_patches(config.vision_config, image_size), adapted,
                                 graph))
    return out


def _module_widths(stack: Stack, module: str) -> tuple[int, int]:
    fan_in = stack.intermediate if module in MLP_IN else stack.hidden
    fan_out = stack.intermediate if module in MLP_OUT else (stack.kv if module in KV_OUT else stack.hidden)
    return fan_in, fan_out


def _activation_bytes(recipe) -> int:
    # peft's k-bit preparation makes the norms float32: the hidden states they emit, and all after them, are float32
    if recipe.quantization.load_in_4bit and recipe.training.prepare_for_kbit_training:
        return 4
    return DTYPE_BYTES[recipe.quantization.compute_dtype]


def layer_bytes_per_token(stack: Stack, recipe) -> int:
    """Return the bytes one layer keeps for backward per token without checkpointing (see the module docstring)."""
    e = _activation_bytes(recipe)
    h, kv, i = stack.hidden, stack.kv, stack.intermediate
    norms = 2 * (4 if stack.rms_norm else e) * h
    attention = e * (2 * h + 2 * kv)
    mlp = e * (3 if stack.gated else 2) * i
    adapters = 0
    if stack.adapted:
        lora = recipe.lora
        for m in lora.target_modules:
            fan_in, fan_out = _module_widths(stack, m)
            adapters += (ADAPTER_BYTES + (1 if lora.dropout > 0 else 0)) * fan_in + ADAPTER_BYTES * lora.r
            if lora.use_dora:
                adapters += (8 if lora.dropout > 0 else ADAPTER_BYTES + e) * fan_out
    return norms + attention + mlp + adapters


def layer_fixed_bytes(stack: Stack, recipe) -> int:
    """Return the bytes one layer keeps whatever the batch: DoRA's float32 dequantized weights (with dropout)."""
    lora = recipe.lora
    if not (stack.adapted and lora.use_dora and lora.dropout > 0):
        return 0
    return sum(4 * math.prod(_module_widths(stack, m)) for m in lora.target_modules)


def activation_parts(stacks_: list[Stack], recipe, batch_size: int, vocab: int | None) -> tuple[int, int]:
    """Return (activations, logits) at the backward peak: what the graph keeps plus the larger of the loss's working
    set and one layer's backward (logits is 0 when the layer backward is the larger)."""
    e = _activation_bytes(recipe)
    checkpointing = recipe.training.gradient_checkpointing
    kept, layer_backward = 0, 0
    for s in stacks_:
        if not s.graph:
            continue  # frozen, not hooked: autograd keeps nothing for it
        one_layer = layer_bytes_per_token(s, recipe) * s.tokens * batch_size + layer_fixed_bytes(s, recipe)
        buffers = MLP_GRAD_BUFFERS * e * s.intermediate * s.tokens * batch_size
        if checkpointing:
            kept += s.layers * e * s.hidden * s.tokens * batch_size
            layer_backward = max(layer_backward, one_layer + buffers)
        else:
            kept += s.layers * one_layer
            layer_backward = max(layer_backward, buffers)
    logits = 0
    if vocab:
        language = next(s for s in stacks_ if s.role == "language_backbone")
        final_norm = 4 * language.hidden * language.tokens * batch_size  # the final RMSNorm's float32 input
        logits = language.tokens * batch_size * vocab * LOGIT_BYTES + final_norm
    if logits >= layer_backward:
        return kept, logits
    return kept + layer_backward, 0


def inputs_bytes(family: FamilySpec, config, batch_size: int, tokens: int, image_size: int | None) -> int:
    """Return the bytes of a batch on the GPU: token tensors, and the float32 pixel values."""
    if family.kind == DUAL_ENCODER:
        v = config.vision_config
        # SigLIP 2 (NaFlex) takes flattened patches, up to num_patches of them; CLIP a square image
        pixels = v.num_patches * v.patch_size ** 2 if getattr(v, "num_patches", None) else v.image_size ** 2
        return batch_size * (16 * tokens + 4 * v.num_channels * pixels)
    total = batch_size * TOKEN_INPUT_BYTES * tokens
    if family.kind == VLM and image_size:
        v = config.vision_config
        values = getattr(v, "in_channels", None) or getattr(v, "in_chans", 3)
        total += batch_size * vision_patches(v, image_size) * 4 * values * v.temporal_patch_size * v.patch_size ** 2
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
             seq_len: int, text_tokens: int | None = None, image_size: int | None = None,
             transformers_version: str | None = None) -> Estimate:
    """Return the memory estimate of a training step at batch_size, seq_len tokens a sample (CLIP: text_tokens),
    images of image_size pixels (default: the recipe's), under transformers_version (default: the installed one)."""
    optimizer = recipe.training.optimizer
    if optimizer not in OPTIMIZER_STATE_BYTES:
        from harness.util.errors import unknown

        raise unknown("optimizer (memory estimate)", optimizer, OPTIMIZER_STATE_BYTES)
    image_size = image_size or recipe.training.image_size
    vocab = None if family.kind == DUAL_ENCODER else config.get_text_config().vocab_size
    layers = stacks(family, config, seq_len, text_tokens, recipe, image_size, transformers_version)
    acts, logits = activation_parts(layers, recipe, batch_size, vocab)
    tokens = text_tokens if family.kind == DUAL_ENCODER else seq_len
    return Estimate(weights, trainable_params * ADAPTER_BYTES, trainable_params * ADAPTER_BYTES,
                    trainable_params * OPTIMIZER_STATE_BYTES[optimizer], acts, logits,
                    inputs_bytes(family, config, batch_size, tokens or 0, image_size),
                    trainable_params * OPTIMIZER_STEP_TEMP_BYTES.get(optimizer, 0))


def meta_counts(family: FamilySpec, size: str | None, recipe, config=None) -> dict:
    """Return {config, weights_bytes, trainable_params, total_params} of a family size (or of config) under a
    recipe, counted on the meta device (no weights allocated); total_params counts every base weight unquantized,
    LoRA not included."""
    from harness.model import lora
    from harness.model.load import meta_model
    from harness.model.synth import make_config

    config = config if config is not None else make_config(family, size)
    model = meta_model(family, config)
    targets = lora.lora_targets(model, family, recipe)
    return {"config": config, "weights_bytes": weights_bytes(model, family, recipe),
            "trainable_params": lora.expected_trainable_params(model, targets, recipe),
            "total_params": sum(p.numel() for p in model.parameters())}


def from_meta(family: FamilySpec, size: str, recipe, batch_size: int, seq_len: int,
              text_tokens: int | None = None, image_size: int | None = None) -> Estimate:
    """Return the estimate for a family size under a recipe from its config alone (meta device, no weights)."""
    c = meta_counts(family, size, recipe)
    return estimate(family, c["config"], recipe, c["weights_bytes"], c["trainable_params"], batch_size, seq_len,
                    text_tokens, image_size=image_size)
