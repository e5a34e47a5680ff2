"""Only LoRA parameters train, in the exact number the targets imply, and every one gets a gradient."""
import torch

from harness.checks import inputs, train
from harness.checks.audit import audit
from harness.checks.checkpointing import counting


def test_trainable_parameters_are_exactly_the_lora_parameters(qlora):
    report = audit(qlora.model, qlora.case.family, qlora.case.recipe, qlora.case.id)
    r = qlora.case.recipe.lora.r
    assert qlora.expected_trainable > 0 and qlora.expected_trainable % r == 0
    assert report.trainable_params == report.lora_params == qlora.expected_trainable


def test_gradient_checkpointing_is_on_when_the_recipe_asks(qlora):
    base = qlora.model.get_base_model()
    assert base.is_gradient_checkpointing == qlora.case.recipe.training.gradient_checkpointing


def test_one_step_changes_lora_and_leaves_every_frozen_byte(fresh):
    batch = inputs.example_batch(fresh.case.family, fresh.processor, count=2, train=True)
    frozen = train.frozen_snapshot(fresh.model)
    lora_before = {n: p.detach().clone() for n, p in train.lora_parameters(fresh.model).items()}
    optimizer = train.make_optimizer(fresh.model, fresh.case.recipe)

    loss = train.train_step(fresh.model, batch, optimizer)

    assert torch.isfinite(torch.tensor(loss))
    assert train.changed_frozen(fresh.model, frozen) == []
    moved = [n for n, p in train.lora_parameters(fresh.model).items() if not torch.equal(p, lora_before[n])]
    assert moved, "no LoRA parameter moved after an optimizer step"


def test_every_lora_parameter_gets_a_gradient(fresh):
    batch = inputs.example_batch(fresh.case.family, fresh.processor, count=2, train=True)
    optimizer = train.make_optimizer(fresh.model, fresh.case.recipe)
    # B starts at zero, so A's gradient is zero until one step has moved B.
    train.train_step(fresh.model, batch, optimizer)

    train.backward(fresh.model, batch)

    assert len(train.lora_parameters(fresh.model)) == sum(1 for p in fresh.model.parameters() if p.requires_grad)
    assert train.without_gradient(fresh.model) == []


def test_gradient_checkpointing_acts_in_training_mode_only(fresh):
    wanted = fresh.case.recipe.training.gradient_checkpointing
    batch = inputs.example_batch(fresh.case.family, fresh.processor, count=2, train=True)

    with counting(fresh.model) as in_training:
        train.backward(fresh.model, batch)
    fresh.model.eval()
    with counting(fresh.model) as in_eval:
        train.forward_loss(fresh.model, batch)

    assert in_training.problem(wanted) is None
    if wanted:
        assert in_training.checkpointed_calls > 0
        assert in_eval.checkpointed_calls == 0 and "eval mode" in in_eval.problem(wanted)
    else:
        assert in_training.checkpointed_calls == in_eval.checkpointed_calls == 0
