"""The checks of one loaded case: the per-role audit of quantization and training (`audit`), model inputs and
image placeholders (`inputs`, `images`), a training step and its optimizer (`train`), gradient checkpointing that
really checkpoints (`checkpointing`) and the adapter save/reload round trip (`adapters`). It may import the model
path and everything below it; the smoke tests, the gate and the GPU tier call it."""
