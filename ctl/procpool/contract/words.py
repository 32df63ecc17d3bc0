"""Counted nouns in messages: ``1 task``, ``3 tasks`` (never ``1 tasks`` nor ``task(s)``).

Leaf module, shared by the daemon's log lines and ``procctl``'s output."""

from __future__ import annotations


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``count`` and ``noun``, in the plural (``nouns``, else ``noun`` + s) unless it is 1."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"
