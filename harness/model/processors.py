"""Loading a checkpoint's processor: AutoProcessor, or the family's processor class assembled from its parts."""
from __future__ import annotations

import json
from pathlib import Path

from harness.families import LLM, FamilySpec

_NEEDS_TORCHVISION = "torchvision"


def _torchvision_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is None


def _images_only(cls):
    """Return a subclass of a processor class that accepts a missing video processor (which needs torchvision)."""

    class ImagesOnly(cls):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

        def apply_chat_template(self, conversation, chat_template=None, **kwargs):
            try:
                return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)
            except AttributeError:
                # some processors read video settings here (SmolVLM: num_frames) even for images; without the video
                # processor the text is the same rendered by the tokenizer with the processor's template
                if getattr(self, "video_processor", None) is not None or kwargs.get("tokenize", False):
                    raise
                kwargs.pop("tokenize", None)
                return self.tokenizer.apply_chat_template(conversation, chat_template=chat_template or self.chat_template,
                                                          tokenize=False, **kwargs)

    ImagesOnly.__name__ = ImagesOnly.__qualname__ = cls.__name__
    return ImagesOnly


def read_chat_template(folder: Path) -> str | None:
    """Return the processor chat template saved in folder (chat_template.jinja or .json), or None."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text())["chat_template"]
    return None


def _image_processor(folder: Path, trust_remote_code: bool):
    """Return the saved image processor: AutoImageProcessor, or the class the folder names where AutoImageProcessor
    itself needs torchvision (transformers 5.0 to 5.23 only resolve it with torchvision installed)."""
    import transformers

    kw = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    try:
        return transformers.AutoImageProcessor.from_pretrained(folder, **kw)
    except ImportError as e:
        if _NEEDS_TORCHVISION not in str(e).lower():
            raise
        saved = json.loads((Path(folder) / "preprocessor_config.json").read_text()).get("image_processor_type", "")
        # the torchvision-free class: the saved name without "Fast" (5.x falls back to its PIL version by itself)
        cls = getattr(transformers, saved.removesuffix("Fast"), None)
        if cls is None:
            raise
        return cls.from_pretrained(folder, **kw)


def assemble(folder: Path, family: FamilySpec, trust_remote_code: bool = False):
    """Return the family's processor class built from the tokenizer, image processor and chat template in folder."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    import inspect

    image_processor = _image_processor(folder, trust_remote_code)
    cls = _images_only(getattr(transformers, family.processor_class))
    template = read_chat_template(folder) or getattr(tokenizer, "chat_template", None)
    # the processor's own settings saved beside it (image_seq_len, num_image_tokens, ...), where the class takes them
    saved = folder / "processor_config.json"
    settings = json.loads(saved.read_text()) if saved.is_file() else {}
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in settings.items() if k in accepted and k not in ("image_processor", "tokenizer")}
    if "video_processor" in accepted:
        kwargs["video_processor"] = None
    if "chat_template" in accepted:
        kwargs["chat_template"] = template
    return cls(image_processor=image_processor, tokenizer=tokenizer, **kwargs)


def load_processor(folder: Path, family: FamilySpec, trust_remote_code: bool = False):
    """Return the processor of a checkpoint folder (the tokenizer alone for language models)."""
    import transformers

    kw = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    if family.kind == LLM:
        return transformers.AutoTokenizer.from_pretrained(folder, **kw)
    try:
        return transformers.AutoProcessor.from_pretrained(folder, **kw)
    except (ImportError, TypeError, ValueError, AttributeError) as e:
        # many VLM processors carry a video processor that needs torchvision; images need none. 5.x says so
        # (ImportError; ValueError from AutoVideoProcessor, e.g. InternVL's); 5.0 fails looking its class up in a
        # mapping that holds None for it (TypeError), 5.5-5.12 reading the None class's module (AttributeError).
        said = isinstance(e, (ImportError, ValueError)) and _NEEDS_TORCHVISION in str(e).lower()
        unsaid = isinstance(e, (TypeError, AttributeError)) and _torchvision_missing()
        if not (said or unsaid) or not family.processor_class:
            raise
        return assemble(Path(folder), family, trust_remote_code)
