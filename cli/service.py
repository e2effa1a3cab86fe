"""See cli/main.py."""

from __future__ import annotations

COMMANDS: list = []
