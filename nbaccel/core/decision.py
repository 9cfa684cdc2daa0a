"""Decision: what one speed-up (or the batch size) became for a run, and why, as RunStarted
reports it: "compile: off (auto: on cpu compiling costs more than it saves)"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Decision:
    name: str  # "feature cache", "compile", "batch size", ...
    value: Union[bool, int, str]  # on/off, a number (workers, batch size), a precision
    why: str  # the user's choice, or the "auto" rule's words

    def line(self) -> str:
        state = (
            ("on" if self.value else "off")
            if isinstance(self.value, bool)
            else str(self.value)
        )
        return f"{self.name}: {state} ({self.why})"
