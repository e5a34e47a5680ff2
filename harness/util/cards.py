"""GPU cards by name and the memory each gives a process, as data: `--gpu T4`, `training.gpu_budget: A10G`.

total_mib is the card's memory as the driver reports it (nvidia-smi's memory.total, which
torch.cuda.get_device_properties(0).total_memory also returns), below the nominal size on the datasheet:
ECC and the driver's reservations take their share. Source: NVIDIA's datasheets for the nominal sizes; the driver's
totals as nvidia-smi prints them on those cards (T4 15360 MiB; L4 23034 MiB; A10G 23028 MiB; RTX 3090 24576 MiB;
RTX 4090 24564 MiB; A100 40 GB 40960 MiB; A100 80 GB 81920 MiB; H100 80 GB HBM3 81559 MiB; H200 143771 MiB, which the
H200 records' fingerprint nvidia-h200-140gib confirms). The CUDA context's share is not taken off here:
harness.measure.fit does that.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Card:
    """A GPU card: its name, nominal memory (GB, datasheet) and the total the driver reports (MiB)."""

    name: str
    nominal_gb: int
    total_mib: int

    @property
    def total_bytes(self) -> int:
        return self.total_mib * 2**20


CARDS = {c.name: c for c in (
    Card("T4", 16, 15360),
    Card("L4", 24, 23034),
    Card("A10G", 24, 23028),
    Card("RTX 3090", 24, 24576),
    Card("RTX 4090", 24, 24564),
    Card("A100-40GB", 40, 40960),
    Card("A100-80GB", 80, 81920),
    Card("H100", 80, 81559),
    Card("H200", 141, 143771),
)}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY = {_key(name): card for name, card in CARDS.items()}


def find_card(name: str) -> Card | None:
    """Return the card of a name, spelled loosely ('rtx4090', 'a100-80gb', 't4'), or None."""
    return _BY_KEY.get(_key(str(name)))
