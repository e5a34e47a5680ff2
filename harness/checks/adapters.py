"""Adapters round-trip: a trained adapter saved, reloaded onto a fresh base, its keys and outputs compared."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.model import pipeline
from harness.model.generate import logits
from harness.model.lora import is_lora_name, prepare_for_training


@dataclass
class RoundTrip:
    """What saving an adapter and reloading it onto a fresh base kept."""

    saved_keys: int  # tensors in the saved adapter file
    lora_params: int  # LoRA parameters of the reloaded model
    unexpected_keys: list[str]  # saved keys the reloaded model has no place for
    missing_lora_keys: list[str]  # LoRA parameters of the reloaded model the file did not fill
    same_outputs: bool  # logits of the reloaded model equal the trained model's, bit for bit

    def problems(self, name: str) -> list[str]:
        """Return one sentence per way the round-trip lost something; empty when it kept everything."""
        out = []
        if not self.saved_keys or self.saved_keys != self.lora_params:
            out.append(f"adapter of {name}: expected one saved tensor per LoRA parameter ({self.lora_params}), "
                       f"found {self.saved_keys} in the saved file")
        if self.unexpected_keys:
            out.append(f"adapter of {name}: {len(self.unexpected_keys)} saved keys did not load: {self.unexpected_keys[:3]}")
        if self.missing_lora_keys:
            out.append(f"adapter of {name}: {len(self.missing_lora_keys)} LoRA parameters were not filled from the file: "
                       f"{self.missing_lora_keys[:3]}")
        if not self.same_outputs:
            out.append(f"adapter of {name}: the reloaded model's logits differ from the trained model's")
        return out


def round_trip(harnessed: pipeline.Harnessed, batch, folder: Path, cache_dir: Path, device: str = "cpu") -> RoundTrip:
    """Return what saving harnessed's adapter to folder and reloading it onto a fresh base kept: keys and outputs."""
    import torch
    from peft import PeftModel
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    expected = logits(harnessed.model, batch)
    harnessed.model.save_pretrained(folder)
    saved = load_peft_weights(str(folder))
    _, base = pipeline.load_base(harnessed.case, cache_dir, device)
    base = prepare_for_training(base, harnessed.case.recipe)  # as the trained one was (k-bit preparation upcasts)
    reloaded = PeftModel.from_pretrained(base, folder)
    result = set_peft_model_state_dict(reloaded, saved)
    lora_names = {n for n, _ in reloaded.named_parameters() if is_lora_name(n)}
    return RoundTrip(
        saved_keys=len(saved), lora_params=len(lora_names), unexpected_keys=list(result.unexpected_keys),
        missing_lora_keys=[k for k in result.missing_keys if is_lora_name(k)],
        same_outputs=torch.equal(logits(reloaded, batch), expected),
    )
