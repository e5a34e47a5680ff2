"""Errors that name the thing, what was expected, what was found and what to do."""
from __future__ import annotations

import difflib
from typing import Iterable


class HarnessError(Exception):
    """An error in the user's input or environment that the harness can explain."""


SHOWN_CHARS = 80  # a value quoted in an error message is cut to this many characters


def shorten(value, limit: int = SHOWN_CHARS):
    """Return value as is when short, else its text cut to limit characters with how much was left out."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return value
    return f"{text[:limit]}... ({len(text)} characters)"


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the nearest known name, or ''."""
    if len(name) > 4 * SHOWN_CHARS:  # difflib is quadratic: a name that long is no typo
        return ""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown(kind: str, name: str, known: Iterable[str]) -> HarnessError:
    """Return an error for an unknown name, suggesting the nearest known one."""
    known = sorted(known)
    return HarnessError(f"unknown {kind} {shorten(name)!r}{did_you_mean(name, known)}; known: {', '.join(known)}")
