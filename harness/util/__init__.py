"""Shared utilities at the bottom of the package: errors that name the thing and the fix (`errors`), atomic
writes through one redacting writer (`atomic`, `redact`), facts of the running environment (`env`) and memory
units (`units`). They import nothing from the rest of harness; everything else may import them."""
