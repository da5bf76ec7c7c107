"""The base of every recipe section: frozen, and an unknown key is refused first, naming the
closest known key."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError


class Section(BaseModel):
    """A recipe section (``extra=\"forbid\"``, frozen)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        """Refuse an unknown key before anything else: a typo (``pth:``) then reads as itself, not as
        the required key it was meant to be (``path: required key is missing``)."""
        unknown = [k for k in data if k not in cls.model_fields] if isinstance(data, dict) else []
        if unknown:
            keys = [k for k, field in cls.model_fields.items() if not field.exclude]  # not base_dir, source
            close = difflib.get_close_matches(str(unknown[0]), keys, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PydanticCustomError("unknown_key", "unknown key{hint}", {"key": unknown[0], "hint": hint})
        return data
