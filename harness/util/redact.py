"""Secrets never reach a written record: tokens from the environment and token-shaped strings are redacted."""
from __future__ import annotations

import os
import re
from typing import Mapping

REDACTED = "<redacted>"
# Environment variables whose values are secrets (HF_TOKEN, HUGGING_FACE_HUB_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY...).
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|AUTH", re.I)
MIN_SECRET_CHARS = 8  # shorter values ("1", "false") are flags, not secrets, and would redact ordinary text
# Token shapes of the services a fine-tuning machine talks to: Hugging Face, GitHub, OpenAI-style keys, AWS, Slack.
TOKEN_PATTERNS = re.compile(
    r"\bhf_[A-Za-z0-9]{20,}"
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}"
    r"|\bsk-[A-Za-z0-9_-]{20,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
)


def secret_values(environ: Mapping[str, str] = os.environ) -> list[str]:
    """Return the values of secret-named environment variables, longest first."""
    values = {v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_CHARS}
    return sorted(values, key=len, reverse=True)


def scrub(text: str, environ: Mapping[str, str] = os.environ) -> str:
    """Return text with every secret environment value and every token-shaped string replaced by <redacted>."""
    for value in secret_values(environ):
        text = text.replace(value, REDACTED)
    return TOKEN_PATTERNS.sub(REDACTED, text)
