"""The model path: synthetic checkpoints in the published layout (`synth`, `layout`), 4-bit loading through
`from_pretrained` and processors (`load`, `processors`), LoRA targets and adapters (`lora`), the load → prepare →
LoRA sequence every tier shares (`pipeline`), merging for deployment (`merge`) and plain forward/greedy helpers
(`generate`). It may import `util`, `families` and `recipe`; it knows nothing of checks, probes or reports."""
