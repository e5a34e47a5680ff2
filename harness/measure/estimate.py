"""A training step's peak GPU memory as arithmetic, term by term, from the config and the recipe (nothing measured).

The peak is the larger of the step's two high points, on top of what lives through the whole step:

    peak = weights + adapters + optimizer state + inputs + max(backward peak, optimizer-step peak)

Each term, and why it has the size it has (e: the bytes of the compute dtype; h, q, kv, i: hidden, query (heads x
head_dim), key/value and MLP widths; T: tokens of a stack per sample; V: vocabulary; P: trainable parameters).

What a sample holds comes from the family's own processor (harness.measure.layout: the harness's training sample laid
out on the CPU, nothing loaded), never from a formula per family: the language model's T is the sample's tokens,
image placeholders included (Gemma 3's 256 pooled soft tokens, SmolVLM's 64 a tile after pixel shuffle, LLaVA-
OneVision's anyres rows and newlines, InternVL's 256 a tile, Qwen's merged patches, Mllama's one <|image|>); the
vision tower's T is the sum of the family's inputs.vision_sequences over the batch's images, tiles and crops (Qwen:
the t x h x w patch grid before the 2x2 merge; Gemma 3: SigLIP's 64 x 64 patches at 896 pixels, before pooling;
SmolVLM: 1024 patches for each of its split tiles and the global view, before pixel shuffle; LLaVA-OneVision: 729
for the whole view and each anyres tile; InternVL: 1025 (a class token) a 448-pixel tile, before pixel shuffle;
Mllama: every one of max_num_tiles tiles, 1601 patches and class token padded to 1608, the global layers over all
tiles at once; CLIP: the grid and a class token; SigLIP 2 NaFlex: max_num_patches slots, padding included); a dual
encoder's text tower's T is its padded caption width.

  weights          the module inventory: 4-bit Linear layers outside keep_16bit at NF4 + double-quant bytes, everything
                   else at 16 bits (32 where peft's prepare_model_for_kbit_training upcasts them).
  adapters         P x 4: peft keeps LoRA (and DoRA's magnitude) in float32 on a 4-bit or 16-bit base.
  optimizer state  P x 8 (AdamW's two float32 moments) or P x 2 (bitsandbytes' 8-bit blockwise state).
  inputs           the batch on the GPU, as the processor's tensors hold it: the per-token tensors (int64 input ids,
                   attention mask and labels: 24 bytes a token; token types, Mllama's cross-attention mask) and the
                   image tensors (float32 pixel values of every tile, SmolVLM's pixel attention mask, grids).
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
                     attention  e x (2q + 2kv): SDPA keeps q, k, v and its output (k, v not repeated for GQA; q is
                                wider than h in Qwen3 and Gemma 3); RoPE's multiplications keep only cos and sin
                     MLP        e x 3i gated (the gate's output, its activation, up), e x 2i with QuickGELU (fc1's
                                output and the sigmoid: Qwen2-VL's and CLIP's towers), e x i with GELU or tanh-GELU
                                (its input: SigLIP, InternViT, Mllama's and Qwen3-VL's towers); frozen 4-bit and 16-bit
                                Linear layers keep no input
                     LoRA       per adapted module (4 + 1) x in + 4r: peft casts the input to float32 for lora_A, which
                                keeps the dropout's float32 output (the 1 is the dropout's mask; no dropout: 4 x in)
                     DoRA       per adapted module 8 x out more (the float32 LoRA and base results kept for the
                                magnitude's gradient) and, with dropout, the float32 dequantized weight (4 x in x out,
                                whatever the batch) that the base result is recomputed from
                   With gradient checkpointing a layer keeps only its input (e x h a token) and one layer at a time is
                   recomputed in backward, in the stacks whose layers are transformers' checkpointing layers (found on
                   the meta model: meta_counts' checkpointable_roles); a stack whose layers are not (Mllama's vision
                   encoder) keeps every layer's activations whatever the recipe. Which stacks carry the graph: those
                   with LoRA; and, under checkpointing with transformers >= 5, a frozen vision tower too, since
                   enable_input_require_grads hooks the input embeddings of every sub-model (its patch embedding
                   included). A frozen tower otherwise keeps nothing. With
                   prepare_model_for_kbit_training the norms are float32, so the hidden states that leave them and
                   everything computed from them are float32 too (e = 4).
  tower outputs    kept beside a vision tower's layers while its graph is: a dense mask over each pass that the tower
                   builds (inputs.vision_dense_mask; Mllama's tile mask: e x 6432^2 an image at four 560-pixel tiles),
                   and a cross-attention model's image states (Mllama: the projector's output, e x text hidden a
                   vision token), the input every checkpointed cross-attention layer keeps.
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
Q_OUT, Q_IN = {"q_proj"}, {"o_proj"}  # adapted modules whose output / input is the query width (heads x head_dim)
GATED_ACTS = ("silu", "swiglu")  # a vision tower with these activations has a gated MLP (Qwen2.5-VL)
# MLP-wide tensors an MLP keeps for backward per token: gated (the gate's output, its activation, up), QuickGELU
# (fc1's output and the sigmoid: x * sigmoid(1.702 x)), any other activation (GELU, tanh-GELU: its input alone)
MLP_SAVES_GATED, MLP_SAVES = 3, {"quick_gelu": 2}
# How close the estimate must land to every training-mode peak of the GPU records (tests/tool/test_report.py)
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
    query: int = 0  # the query width, heads x head_dim (0: hidden)
    mlp_saves: int = 0  # MLP-wide tensors kept a token (0: 3 if gated else 2)
    checkpointable: bool = True  # its layers are transformers' checkpointing layers (Mllama's vision layers are not)

    @property
    def q(self) -> int:
        return self.query or self.hidden

    @property
    def mlp_kept(self) -> int:
        return self.mlp_saves or (MLP_SAVES_GATED if self.gated else 2)


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


def _head_dim(config) -> int:
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "attention_heads", None) or config.num_heads
    return getattr(config, "head_dim", None) or config.hidden_size // heads, heads


def _kv_width(config) -> int:
    head_dim, heads = _head_dim(config)
    return (getattr(config, "num_key_value_heads", None) or heads) * head_dim


def _q_width(config) -> int:
    head_dim, heads = _head_dim(config)
    return heads * head_dim


def _mlp_saves(config, gated: bool) -> int:
    act = getattr(config, "hidden_act", None) or getattr(config, "hidden_activation", None) or ""
    return MLP_SAVES_GATED if gated else MLP_SAVES.get(act, 1)


def towers_keep_graph(transformers_version: str | None = None) -> bool:
    """Return whether gradient checkpointing makes a frozen vision tower keep autograd's graph: transformers >= 5
    hooks the input embeddings of every sub-model (None: the installed version)."""
    if transformers_version is None:
        import transformers

        transformers_version = transformers.__version__
    return int(str(transformers_version).split(".")[0]) >= 5


def _vision_stack(v, tokens: int, adapted: bool, graph: bool, checkpointable: bool) -> Stack:
    """Return a vision tower's (or a dual encoder's image tower's) stack from its config: layers (depth, or
    num_hidden_layers plus Mllama's num_global_layers), widths, MLP kind and norm."""
    hidden = getattr(v, "embed_dim", None) or v.hidden_size
    intermediate = getattr(v, "intermediate_size", None) or int(hidden * v.mlp_ratio)
    gated = getattr(v, "hidden_act", "") in GATED_ACTS
    layers = (getattr(v, "depth", None) or v.num_hidden_layers) + (getattr(v, "num_global_layers", None) or 0)
    # Qwen2.5-VL's gated (SiLU) vision blocks use RMSNorm; the QuickGELU/GELU towers (Qwen2-VL, Qwen3-VL, CLIP,
    # SigLIP, InternViT, Mllama's) LayerNorm
    return Stack("vision_tower", layers, hidden, hidden, intermediate, gated, gated, tokens, adapted, graph,
                 mlp_saves=_mlp_saves(v, gated), checkpointable=checkpointable)


def stacks(family: FamilySpec, config, seq_len: int, text_tokens: int | None = None, recipe=None,
           image_size: int | None = None, transformers_version: str | None = None, layout=None,
           checkpointable_roles=None) -> list[Stack]:
    """Return the model's layer stacks with their tokens per sample: a dual encoder's image tower (its
    vision_sequences) and text tower (its padded captions); a VLM's vision tower (its vision_sequences) and seq_len
    tokens of the language model, image placeholders included. layout is the sample's harness.measure.layout.Layout
    (None: no images); checkpointable_roles the roles whose layers are checkpointing layers (None: all)."""
    roles = set(recipe.lora.target_roles) if recipe else {"language_backbone"}
    checkpointing = bool(recipe and recipe.training.gradient_checkpointing)

    def checkpointable(role: str) -> bool:
        return checkpointable_roles is None or role in checkpointable_roles

    if family.kind == DUAL_ENCODER:
        v, t = config.vision_config, config.text_config
        vision = _vision_stack(v, layout.vision_tokens, "vision_tower" in roles, "vision_tower" in roles,
                               checkpointable("vision_tower"))
        text = layout.text_positions if layout is not None else (text_tokens or t.max_position_embeddings)
        return [vision, Stack("language_backbone", t.num_hidden_layers, t.hidden_size, t.hidden_size,
                              t.intermediate_size, False, False, text, "language_backbone" in roles,
                              "language_backbone" in roles, mlp_saves=_mlp_saves(t, False),
                              checkpointable=checkpointable("language_backbone"))]
    t = config.get_text_config()
    out = [Stack("language_backbone", t.num_hidden_layers, t.hidden_size, _kv_width(t), t.intermediate_size,
                 True, True, seq_len, "language_backbone" in roles, "language_backbone" in roles,
                 query=_q_width(t), checkpointable=checkpointable("language_backbone"))]
    if family.kind == VLM and layout is not None and layout.vision_tokens:
        adapted = "vision_tower" in roles
        graph = adapted or (checkpointing and towers_keep_graph(transformers_version))
        out.append(_vision_stack(config.vision_config, layout.vision_tokens, adapted, graph,
                                 checkpointable("vision_tower")))
    return out


def _module_widths(stack: Stack, module: str) -> tuple[int, int]:
    fan_in = stack.intermediate if module in MLP_IN else (stack.q if module in Q_IN else stack.hidden)
    fan_out = (stack.intermediate if module in MLP_OUT else stack.kv if module in KV_OUT
               else stack.q if module in Q_OUT else stack.hidden)
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
    attention = e * (2 * stack.q + 2 * kv)
    mlp = e * stack.mlp_kept * i
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
        if checkpointing and s.checkpointable:
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


def tower_outputs_bytes(family: FamilySpec, config, stacks_: list[Stack], layout, recipe) -> int:
    """Return what a sample's vision tower leaves for backward outside its layers, while its graph is kept: the
    dense mask over each pass that the tower builds (inputs.vision_dense_mask: e x sequence^2, one tensor every layer's
    attention keeps), and a cross-attention model's image states (the projector's output, text hidden x e a vision
    token), the one input every checkpointed cross-attention layer keeps."""
    vision = next((s for s in stacks_ if s.role == "vision_tower"), None)
    if family.kind != VLM or vision is None or not vision.graph or layout is None:
        return 0
    e = _activation_bytes(recipe)
    total = e * sum(n * n for n in layout.vision_sequences) if family.inputs.vision_dense_mask else 0
    if "cross_attention" in family.roles:
        total += e * config.get_text_config().hidden_size * layout.vision_tokens
    return total


def inputs_bytes(family: FamilySpec, config, batch_size: int, tokens: int, layout=None) -> int:
    """Return the bytes of a batch on the GPU: the per-token tensors at tokens positions a sample (a dual encoder's:
    its padded captions) and the image tensors, as the processor's batch holds them (layout); without a layout
    (text only), int64 input ids, attention mask and labels."""
    if layout is None:
        return batch_size * TOKEN_INPUT_BYTES * tokens
    return batch_size * layout.input_bytes(None if family.kind == DUAL_ENCODER else tokens)


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
             transformers_version: str | None = None, layout=None, checkpointable_roles=None) -> Estimate:
    """Return the memory estimate of a training step at batch_size, seq_len tokens a sample (CLIP: text_tokens),
    images of image_size pixels (default: the recipe's), under transformers_version (default: the installed one).

    layout is the sample as the family's processor lays it out (harness.measure.layout; default: the family's own
    processor for config, at image_size); checkpointable_roles the roles whose layers transformers checkpoints
    (meta_counts' "checkpointable_roles"; default: every role)."""
    optimizer = recipe.training.optimizer
    if optimizer not in OPTIMIZER_STATE_BYTES:
        from harness.util.errors import unknown

        raise unknown("optimizer (memory estimate)", optimizer, OPTIMIZER_STATE_BYTES)
    image_size = image_size or recipe.training.image_size
    if layout is None and family.has_images and image_size:
        from .layout import layout_of

        layout = layout_of(family, config, image_size, seq_len)
    vocab = None if family.kind == DUAL_ENCODER else config.get_text_config().vocab_size
    layers = stacks(family, config, seq_len, text_tokens, recipe, image_size, transformers_version, layout,
                    checkpointable_roles)
    acts, logits = activation_parts(layers, recipe, batch_size, vocab)
    acts += batch_size * tower_outputs_bytes(family, config, layers, layout, recipe)
    tokens = text_tokens if family.kind == DUAL_ENCODER else seq_len
    return Estimate(weights, trainable_params * ADAPTER_BYTES, trainable_params * ADAPTER_BYTES,
                    trainable_params * OPTIMIZER_STATE_BYTES[optimizer], acts, logits,
                    inputs_bytes(family, config, batch_size, tokens or 0, layout),
                    trainable_params * OPTIMIZER_STEP_TEMP_BYTES.get(optimizer, 0))


def checkpointable_roles(model, family: FamilySpec) -> frozenset | None:
    """Return the roles holding transformers' checkpointing layers (GradientCheckpointingLayer): the stacks that
    gradient checkpointing recomputes; None where the running transformers has no such class."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:
        return None
    return frozenset(family.role_of(name) for name, m in model.named_modules()
                     if isinstance(m, GradientCheckpointingLayer)) - {None}


def meta_counts(family: FamilySpec, size: str | None, recipe, config=None) -> dict:
    """Return {config, weights_bytes, trainable_params, total_params, checkpointable_roles} of a family size (or of
    config) under a recipe, counted on the meta device (no weights allocated); total_params counts every base weight
    unquantized, LoRA not included."""
    from harness.model import lora
    from harness.model.load import meta_model
    from harness.model.synth import make_config

    config = config if config is not None else make_config(family, size)
    model = meta_model(family, config)
    targets = lora.lora_targets(model, family, recipe)
    return {"config": config, "weights_bytes": weights_bytes(model, family, recipe),
            "trainable_params": lora.expected_trainable_params(model, targets, recipe),
            "total_params": sum(p.numel() for p in model.parameters()),
            "checkpointable_roles": checkpointable_roles(model, family)}


def from_meta(family: FamilySpec, size: str, recipe, batch_size: int, seq_len: int,
              text_tokens: int | None = None, image_size: int | None = None) -> Estimate:
    """Return the estimate for a family size under a recipe from its config alone (meta device, no weights)."""
    c = meta_counts(family, size, recipe)
    return estimate(family, c["config"], recipe, c["weights_bytes"], c["trainable_params"], batch_size, seq_len,
                    text_tokens, image_size=image_size, checkpointable_roles=c["checkpointable_roles"])
