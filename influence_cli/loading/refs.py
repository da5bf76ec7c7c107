"""A checkpoint named by the recipe, before loading (shared by the checkpoint formats)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint named by the recipe, before loading. ``learning_rate`` may be ``"auto"``."""

    path: Path
    learning_rate: float | str
    key: str  # the recipe key, for error messages
    strip_prefix: str | None = None
    learning_rate_source: str = "recipe"  # where a numeric learning_rate came from (run.json records it)

    @property
    def where(self) -> str:
        return f"{self.key} ({self.path})"
