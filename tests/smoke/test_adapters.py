"""Adapters round-trip: saved, reloaded onto a fresh base, every key loaded and the outputs identical."""
import torch
from peft import PeftModel
from peft.utils import load_peft_weights, set_peft_model_state_dict

from harness import inputs, pipeline, train
from harness.generate import logits


def test_saved_adapter_reloads_every_key_and_the_same_outputs(fresh, tmp_path, cache_dir):
    batch = inputs.example_batch(fresh.case.family, fresh.processor, count=2, train=True)
    train.train_step(fresh.model, batch, train.make_optimizer(fresh.model, fresh.case.recipe))
    eval_batch = inputs.example_batch(fresh.case.family, fresh.processor, count=2)
    expected = logits(fresh.model, eval_batch)
    fresh.model.save_pretrained(tmp_path)
    saved = load_peft_weights(str(tmp_path))

    _, base = pipeline.load_base(fresh.case, cache_dir)
    reloaded = PeftModel.from_pretrained(base, tmp_path)
    result = set_peft_model_state_dict(reloaded, saved)

    lora_names = {n for n, _ in reloaded.named_parameters() if "lora_" in n}
    assert len(saved) == len(lora_names) > 0
    assert result.unexpected_keys == []
    assert [k for k in result.missing_keys if "lora_" in k] == []
    assert torch.equal(logits(reloaded, eval_batch), expected)
