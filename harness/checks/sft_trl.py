"""The supervised example through TRL's own SFTTrainer: its dataset preparation and collator, then one of its steps.

The user's SFTConfig arguments (recipe training.sft_config) are passed as written; only what a check needs to run in
a scratch folder is set on top (output_dir, max_steps=1, no reports, no saving, a log at every step). The example is
a conversational prompt-completion record (with the image for VLMs), for which TRL labels the completion only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.families import LLM

from .examples import REPLY, Example
from .inputs import PROMPT

RUN_KEYS = {"max_steps": 1, "report_to": "none", "save_strategy": "no", "logging_steps": 1, "num_train_epochs": 1}


@dataclass
class TrlStep:
    """What TRL did with the example: the batch its data path made, and the loss of its one training step."""

    example: Example
    loss: float | None  # None when the step could not run here (skipped says why)
    skipped: str = ""


def step_blocker() -> str:
    """Return why TRL's training step cannot run in this environment, or "" when it can."""
    import importlib.util

    import trl
    from trl.trainer import utils

    # TRL 1.x computes the SFT loss through a fused LM head whose kernel is Triton's; without triton (a CPU-only
    # torch) the kernel is None and the step fails deep inside compute_loss.
    if getattr(utils, "_ChunkedLogProbFunction", object) is None and importlib.util.find_spec("triton") is None:
        return (f"TRL {trl.__version__}'s SFTTrainer computes its loss with a Triton kernel (fused LM head) and "
                "triton is not installed (a CPU-only torch): its step runs on a CUDA GPU")
    return ""


def record(family, prompt: str = PROMPT, reply: str = REPLY, seed: int = 0) -> dict:
    """Return one dataset record in TRL's conversational prompt-completion format (with its image for VLMs)."""
    from .images import shape_image

    row = {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": reply}]}
    if family.kind != LLM:
        size = family.tiny_image_size
        row["images"] = [shape_image(size, size, *reply.split()[1:], seed=seed)]
    return row


def sft_config(sft_kwargs: dict, output_dir: Path, device: str):
    """Return TRL's SFTConfig from the recipe's arguments as written, plus what one scratch step needs."""
    from trl import SFTConfig

    kwargs = {**sft_kwargs, **RUN_KEYS, "output_dir": str(output_dir)}
    if device == "cpu":
        kwargs.setdefault("use_cpu", True)
    return SFTConfig(**kwargs)


def one_step(harnessed, output_dir: Path, device: str = "cpu") -> TrlStep:
    """Return the batch TRL's SFTTrainer data path builds from the example and the loss of one of its steps."""
    from datasets import Dataset
    from trl import SFTTrainer

    family = harnessed.case.family
    args = sft_config(dict(harnessed.case.recipe.training.sft_config or {}), output_dir, device)
    trainer = SFTTrainer(model=harnessed.model, args=args, train_dataset=Dataset.from_list([record(family)]),
                         processing_class=harnessed.processor)
    batch = next(iter(trainer.get_train_dataloader()))
    from transformers import BatchFeature

    example = Example(BatchFeature({k: v.detach().cpu() if hasattr(v, "detach") else v for k, v in batch.items()}),
                      REPLY, 0, True)
    blocker = step_blocker()
    if blocker:
        return TrlStep(example, None, blocker)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return TrlStep(example, float(losses[0]) if losses else float("nan"))
