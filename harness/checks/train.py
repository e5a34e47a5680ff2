"""One training step, and what it should touch: only LoRA parameters move, every one gets a gradient."""
from __future__ import annotations

from harness.model.lora import is_lora_name


def forward_loss(model, batch):
    """Return the training loss of a batch (causal LM loss, or CLIP's contrastive loss)."""
    if "labels" in batch:
        return model(**batch).loss
    return model(**batch, return_loss=True).loss


def make_optimizer(model, recipe):
    """Return the recipe's optimizer over the trainable parameters."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    name = recipe.training.optimizer
    lr = recipe.training.learning_rate
    if name in ("adamw_torch", "adamw"):
        return torch.optim.AdamW(params, lr=lr)
    if name in ("paged_adamw_32bit", "paged_adamw_8bit", "adamw_8bit"):
        import bitsandbytes as bnb

        cls = {"paged_adamw_32bit": bnb.optim.PagedAdamW32bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
               "adamw_8bit": bnb.optim.AdamW8bit}[name]
        return cls(params, lr=lr)
    from harness.recipe import OPTIMIZERS
    from harness.util.errors import unknown

    raise unknown("optimizer", name, OPTIMIZERS)


def train_step(model, batch, optimizer, training: bool = True) -> float:
    """Run forward, backward and one optimizer step; return the loss.

    training=False runs the step with the model in eval mode: the trap in which gradient checkpointing and
    dropout silently do nothing. Only comparisons that demonstrate the trap ask for it.
    """
    model.train(training)
    optimizer.zero_grad(set_to_none=True)
    loss = forward_loss(model, batch)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def backward(model, batch) -> float:
    """Run forward and backward in training mode without stepping; return the loss."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = forward_loss(model, batch)
    loss.backward()
    return float(loss.detach())


def lora_parameters(model) -> dict:
    """Return the LoRA parameters by name."""
    return {n: p for n, p in model.named_parameters() if is_lora_name(n)}


def without_gradient(model) -> list[str]:
    """Return the trainable parameters whose gradient is missing or all zero."""
    return [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]


def frozen_snapshot(model) -> dict:
    """Return a copy of every frozen parameter's raw bytes and its quant state, to compare after a step."""
    import torch

    snap = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            continue
        snap[n] = p.detach().reshape(-1).view(torch.uint8).clone()
        state = getattr(p, "quant_state", None)
        if state is not None:
            snap[n + ":absmax"] = state.absmax.detach().clone()
    return snap


def changed_frozen(model, before: dict) -> list[str]:
    """Return the frozen parameters whose bytes differ from the snapshot."""
    import torch

    after = frozen_snapshot(model)
    return [n for n in before if n not in after or not torch.equal(before[n], after[n])]
