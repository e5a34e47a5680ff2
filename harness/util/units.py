"""Units of memory: the byte constants and the parser of sizes such as '24GiB' or a card name ('T4'), shared by
recipes, probes and `qlora-harness fit`."""
from __future__ import annotations

import re

from harness.util.cards import CARDS, find_card
from harness.util.errors import HarnessError

GiB = 2**30
MiB = 2**20


def parse_bytes(text: str) -> int:
    """Return bytes from '24GiB', '16GB', '512MiB', a plain number or a card name (its memory as the driver reports
    it: harness.util.cards); raise naming the accepted forms."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(GiB|GB|MiB|MB|B)?\s*", str(text)[:100])
    if not m:
        card = find_card(str(text)[:100])
        if card is not None:
            return card.total_bytes
        shown = str(text) if len(str(text)) <= 40 else str(text)[:40] + "..."
        raise HarnessError(f"memory size {shown!r}: expected a number with GiB, GB, MiB or MB, e.g. 24GiB, or a card: "
                           f"{', '.join(CARDS)}")
    scale = {"GiB": GiB, "GB": 10**9, "MiB": 2**20, "MB": 10**6, "B": 1, None: 1}[m.group(2)]
    return int(float(m.group(1)) * scale)
