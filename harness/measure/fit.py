"""`qlora-harness fit`: will a recipe's training step fit a card, before anything loads?

The model is built on the meta device (no weights allocated) from the family's config or a checkpoint's config.json;
the tokens a sample has come from the processor laying out the harness's own training sample (a prompt, an image of
image_size pixels, an answer filling seq_len), so image placeholders are counted as the model will see them. The
memory of each batch size is harness.measure.estimate's, part by part, and the card's verdict adds what the step's
figures leave out:

  fixed overhead   the CUDA context (outside PyTorch's allocator; CONTEXT_BYTES, typical of CUDA 12 with lazy module
                   loading) and cuBLAS's workspaces (WORKSPACE_BYTES: what the H200 records' process baseline holds)
  headroom         the caching allocator reserves more than it hands out (the H200 records' peak reserved runs 10-20%
                   over peak allocated); it frees cached blocks and retries before an OOM, so a step within
                   HEADROOM of the card is "tight", not "fits"
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.util.cards import CARDS, find_card
from harness.util.errors import HarnessError, unknown
from harness.util.units import GiB, MiB, parse_bytes

from . import estimate
from .layout import processor_for, sample_layout

CONTEXT_BYTES = 512 * MiB
WORKSPACE_BYTES = 66 * MiB  # process_baseline_allocated_bytes of the H200 records: cuBLAS's bf16 and fp32 workspaces
HEADROOM = 0.10
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
LARGEST_SEARCHED = 4096
PARTS = ("weights", "adapters", "gradients", "optimizer", "activations", "logits", "inputs", "fixed overhead")


@dataclass
class Plan:
    """What `fit` found: the workload, the card and the estimate per batch size."""

    family: str
    size: str
    recipe: str
    card: str
    card_bytes: int
    tokens_per_sample: int
    image_size: int | None
    seq_len: int
    estimates: dict = field(default_factory=dict)  # batch size -> Estimate
    largest_fitting: int = 0

    @property
    def usable_bytes(self) -> int:
        return self.card_bytes - CONTEXT_BYTES - WORKSPACE_BYTES

    def needed_bytes(self, e: estimate.Estimate) -> int:
        return e.total_bytes + CONTEXT_BYTES + WORKSPACE_BYTES

    def verdict(self, e: estimate.Estimate) -> str:
        needed = self.needed_bytes(e)
        return "fits" if needed <= (1 - HEADROOM) * self.card_bytes else ("tight" if needed <= self.card_bytes else "no")

    def as_dict(self) -> dict:
        rows = {}
        for n, e in self.estimates.items():
            rows[str(n)] = {**e.as_dict(), "fixed_overhead_bytes": CONTEXT_BYTES + WORKSPACE_BYTES,
                            "needed_bytes": self.needed_bytes(e), "verdict": self.verdict(e)}
        return {"family": self.family, "size": self.size, "recipe": self.recipe, "card": self.card,
                "card_bytes": self.card_bytes, "usable_bytes": self.usable_bytes, "headroom": HEADROOM,
                "tokens_per_sample": self.tokens_per_sample, "image_size": self.image_size, "seq_len": self.seq_len,
                "static_bytes": next(iter(self.estimates.values())).weights_bytes if self.estimates else None,
                "batch_sizes": rows, "largest_fitting_batch_size": self.largest_fitting}


def card_memory(text: str) -> tuple[str, int]:
    """Return (name, bytes) of a card name or a size such as 16GiB; raise naming the cards known."""
    card = find_card(text)
    if card is not None:
        return card.name, card.total_bytes
    try:
        return str(text), parse_bytes(text)
    except HarnessError:
        raise unknown("GPU (a card name or a size such as 16GiB)", text, CARDS) from None


def tokens_per_sample(family, config, processor, image_size: int, seq_len: int, batch_size: int = 1) -> int:
    """Return the tokens of a training sample as the harness lays out a batch (inputs.sized_batch), placeholders
    included: the batch's attention-mask total over its samples (CLIP's captions differ in length)."""
    from harness.checks import inputs

    batch = inputs.sized_batch(family, processor, batch_size, image_size, seq_len)
    return int(batch["attention_mask"].sum()) // batch_size


def _processor(family, config, checkpoint: Path | None):
    return processor_for(family, config, checkpoint)


def workload(recipe, size: str | None = None, checkpoint: Path | None = None):
    """Return (family, size, config) of a recipe: a checkpoint's config (read only), or a family size's."""
    from harness.families import get_family
    from harness.model.load import read_config, resolve_checkpoint
    from harness.model.synth import make_config

    family = get_family(recipe.family)
    if checkpoint is not None:
        checkpoint = resolve_checkpoint(checkpoint)
        return family, checkpoint.name, read_config(checkpoint, family)
    sizes = family.size_names()
    if size is None:  # the largest: the one a user asks about first
        from harness.model.load import meta_model

        size = max(sizes, key=lambda s: sum(p.numel() for p in meta_model(family, make_config(family, s)).parameters()))
    elif size not in sizes:
        raise unknown(f"size of {family.name}", size, sizes)
    return family, size, make_config(family, size)


def plan(recipe, gpu: str, size: str | None = None, checkpoint: str | Path | None = None,
         image_size: int | None = None, seq_len: int | None = None, batch_sizes=None,
         transformers_version: str | None = None) -> Plan:
    """Return the Plan of a recipe on a card: the estimate at each batch size and the largest batch size that fits."""
    card, card_bytes = card_memory(gpu)
    t = recipe.training
    image_size, seq_len = image_size or t.image_size, seq_len or t.seq_len
    if image_size < 1 or seq_len < 1:
        raise HarnessError(f"--image-size and --seq-len must be positive, found {image_size} and {seq_len}")
    family, size, config = workload(recipe, size, Path(checkpoint) if checkpoint else None)
    counts = estimate.meta_counts(family, None, recipe, config=config)
    processor = processor_for(family, config, Path(checkpoint) if checkpoint else None)
    sample = sample_layout(family, config, processor, image_size, seq_len)
    tokens = sample.tokens
    has_images = family.has_images

    def at(n: int) -> estimate.Estimate:
        text = tokens if family.kind == "dual-encoder" else None
        return estimate.estimate(family, config, recipe, counts["weights_bytes"], counts["trainable_params"], n,
                                 tokens, text, image_size=image_size if has_images else None,
                                 transformers_version=transformers_version, layout=sample if has_images else None,
                                 checkpointable_roles=counts["checkpointable_roles"])

    result = Plan(family.name, size, recipe.name, card, card_bytes, tokens, image_size if has_images else None,
                  seq_len)
    for n in sorted(set(batch_sizes or DEFAULT_BATCH_SIZES)):
        if n < 1:
            raise HarnessError(f"--batch-size must be positive, found {n}")
        result.estimates[n] = at(n)
    result.largest_fitting = _largest(lambda n: result.verdict(at(n)) == "fits")
    return result


def _largest(fits) -> int:
    """Return the largest n in 1..LARGEST_SEARCHED with fits(n) (fits is monotone), 0 if none."""
    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= LARGEST_SEARCHED and fits(high):
        low, high = high, high * 2
    high = min(high, LARGEST_SEARCHED + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def _parts(e: estimate.Estimate) -> list[int]:
    return [e.weights_bytes, e.adapters_bytes, e.gradients_bytes, e.optimizer_bytes, e.activations_bytes,
            e.logits_bytes, e.inputs_bytes, CONTEXT_BYTES + WORKSPACE_BYTES]


def render(p: Plan) -> str:
    """Return the Plan as a table a person reads: parts by batch size (GiB), the verdict, the largest that fits."""
    sizes = list(p.estimates)
    head = f"{'GiB':<26}" + "".join(f"{'bs' + str(n):>9}" for n in sizes)
    image = f", images {p.image_size}px" if p.image_size else ""
    lines = [f"{p.recipe}: {p.family} {p.size} on {p.card} ({p.card_bytes / GiB:.1f} GiB; usable "
             f"{p.usable_bytes / GiB:.1f} GiB after the CUDA context and cuBLAS workspace)",
             f"{p.tokens_per_sample} tokens a sample (seq_len {p.seq_len}{image}); "
             f"static (weights) {next(iter(p.estimates.values())).weights_bytes / GiB:.2f} GiB", "", head]
    columns = [_parts(p.estimates[n]) for n in sizes]
    for i, part in enumerate(PARTS):
        note = " (after backward)" if part == "gradients" else ""
        lines.append(f"{part + note:<26}" + "".join(f"{c[i] / GiB:>9.2f}" for c in columns))
    lines.append(f"{'peak + fixed overhead':<26}" + "".join(f"{p.needed_bytes(p.estimates[n]) / GiB:>9.2f}"
                                                            for n in sizes))
    lines.append(f"{'fits (' + format(HEADROOM, '.0%') + ' headroom)':<26}"
                 + "".join(f"{p.verdict(p.estimates[n]):>9}" for n in sizes))
    lines += ["", f"largest batch size that fits: {p.largest_fitting}" if p.largest_fitting else
              f"no batch size fits {p.card}: try gradient checkpointing, a shorter seq_len, a smaller image_size, "
              "or an 8-bit optimizer",
              "the peak is weights + adapters + optimizer + inputs + the larger of (activations + logits) at the loss's "
              "backward and gradients at the optimizer step (harness/measure/estimate.py)"]
    return "\n".join(lines)


def add_arguments(p) -> None:
    """Add fit's arguments to an argparse parser."""
    p.add_argument("recipe", help="a recipe YAML, e.g. recipes/qwen2.5-vl.yaml")
    p.add_argument("--gpu", required=True, help=f"a card ({', '.join(CARDS)}) or a size such as 16GiB")
    p.add_argument("--size", default=None, help="the family's model size (default: its largest)")
    p.add_argument("--checkpoint", default=None, help="a checkpoint folder: its config.json and processor are read, "
                                                      "no weights loaded")
    p.add_argument("--image-size", type=int, default=None, help="image side in pixels (default: the recipe's)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens a sample (default: the recipe's)")
    p.add_argument("--batch-size", type=int, action="append", default=None,
                   help=f"a batch size to show (repeatable; default {', '.join(map(str, DEFAULT_BATCH_SIZES))})")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    """Run `qlora-harness fit`; return 0 when the smallest batch size shown fits, else 1."""
    import json

    from harness.recipe import load_recipe

    p = plan(load_recipe(args.recipe), args.gpu, args.size, args.checkpoint, args.image_size, args.seq_len,
             args.batch_size)
    print(json.dumps(p.as_dict(), indent=2) if args.json else render(p))
    return 0 if p.largest_fitting else 1
