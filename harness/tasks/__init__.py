"""Behaviour tasks and the seed experiments: the drawn shapes task and grounding format (`shapes`, `grounding`),
training loops on them (`learn`), the seed experiments as data (`experiments`), their task steps (`seed_tasks`)
and the runner behind `qlora-harness run` (`run`). It may import measurements, checks, the model path and below."""
