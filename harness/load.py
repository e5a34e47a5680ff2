"""The README's `harness.load.load_model`, kept importable from its old home; the code lives in harness.model.load."""
from harness.model.load import load_model, meta_model

__all__ = ["load_model", "meta_model"]
