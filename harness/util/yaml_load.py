"""Reading a YAML file a user wrote: the file checks, the encoding, duplicate keys and alias bombs, as clear errors.

PyYAML's safe loader already refuses python tags; this adds what a hostile or careless file can still do to it:
a key given twice (PyYAML keeps the last silently), aliases that expand a few lines into gigabytes, nesting
deep enough to overflow the stack, bytes that are not UTF-8, and a path that is a folder or cannot be read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import HarnessError, shorten

MAX_FILE_BYTES = 1 << 20  # a recipe is a few hundred bytes; a megabyte is not a recipe
MAX_NODES = 10_000  # scalars, lists and mappings after aliases are expanded: a recipe has about a hundred


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing a mapping key given twice."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` merges are overridden on purpose
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                    seen.setdefault(key, line)
                except TypeError:
                    continue  # an unhashable key: the base loader names it
                if first is not None:
                    raise HarnessError(f"line {line}: key {shorten(key)!r} is given twice (first on line {first}); "
                                       "YAML would keep only the last: give each key once")
        return super().construct_mapping(node, deep=deep)


def _expanded_nodes(root) -> int:
    """Return how many nodes the document holds once every alias is expanded (MAX_NODES + 1 when more, or recursive)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # being counted: met again below itself, an alias is recursive
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if children_done:
            open_nodes.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), MAX_NODES + 1)
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            return MAX_NODES + 1
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children)
    return sizes[id(root)]


def parse_yaml(text: str, source: str) -> Any:
    """Return the data of a YAML document; raise HarnessError naming the source on anything a recipe must not be."""
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                return None
            if _expanded_nodes(root) > MAX_NODES:
                raise HarnessError(f"{source}: YAML aliases expand to more than {MAX_NODES} values; a recipe is a "
                                   "few dozen: write the values out, or use fewer aliases")
            return loader.construct_document(root)
        finally:
            loader.dispose()
    except HarnessError as e:
        message = str(e)
        raise HarnessError(message if message.startswith(source) else f"{source}: {message}") from None
    except yaml.YAMLError as e:
        lines = str(e).splitlines()
        raise HarnessError(f"{source}: not valid YAML: {shorten(' '.join(l.strip() for l in lines[:6]), 300)}") from None
    except RecursionError:
        raise HarnessError(f"{source}: YAML nested too deeply to read; a recipe is a few levels deep") from None


def read_text_file(path: str | Path, what: str, example: str) -> str:
    """Return the UTF-8 text of a small file the user named; raise HarnessError saying what is wrong with the path."""
    path = Path(path)
    if path.is_dir():
        raise HarnessError(f"{what} {path} is a folder, not a file; give the path of {example}")
    if not path.exists():
        raise HarnessError(f"{what} {path} does not exist; give the path of {example}")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise HarnessError(f"{what} {path} cannot be read ({e.strerror or e}); check its permissions") from None
    if len(data) > MAX_FILE_BYTES:
        raise HarnessError(f"{what} {path} is larger than {MAX_FILE_BYTES // 1024} KiB; give the path of {example}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise HarnessError(f"{what} {path} is not UTF-8 text (byte {data[e.start]:#04x} on line {line}); "
                           "save it as UTF-8") from None


def load_yaml_file(path: str | Path, what: str = "recipe file", example: str = "a YAML recipe") -> Any:
    """Return the data of a YAML file, every problem with the file or its YAML a HarnessError naming it."""
    return parse_yaml(read_text_file(path, what, example), str(path))
