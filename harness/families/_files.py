"""Writing a processor's files part by part, for processors whose video half needs torchvision (images need none)."""
from __future__ import annotations

import json
from pathlib import Path


def save_processor_parts(folder: Path, processor_class: str, tokenizer, image_processor, chat_template: str,
                         **settings) -> None:
    """Write tokenizer, image processor, chat template and processor_config.json (processor_class and its settings),
    the files a published checkpoint has; harness.model.processors assembles the processor from them."""
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(chat_template)
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": processor_class, **settings}, indent=2))
