"""Adapters round-trip: saved, reloaded onto a fresh base, every key loaded and the outputs identical."""
from harness.checks import adapters, inputs, train


def test_saved_adapter_reloads_every_key_and_the_same_outputs(fresh, tmp_path, cache_dir):
    batch = inputs.example_batch(fresh.case.family, fresh.processor, count=2, train=True)
    train.train_step(fresh.model, batch, train.make_optimizer(fresh.model, fresh.case.recipe))
    eval_batch = inputs.example_batch(fresh.case.family, fresh.processor, count=2)

    trip = adapters.round_trip(fresh, eval_batch, tmp_path, cache_dir)

    assert trip.saved_keys == trip.lora_params > 0
    assert trip.unexpected_keys == []
    assert trip.missing_lora_keys == []
    assert trip.same_outputs
