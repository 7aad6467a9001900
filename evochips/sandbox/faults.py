"""Faults the sandbox can inject into its API answers, each for a number of calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Faults:
    # API answers: a delay on each, then the next N calls fail, hang or hide an error.
    latency_ms: int = 0
    fail_status: int = 503
    fail_times: int = 0
    hang_times: int = 0
    error_in_200_times: int = 0
    # Webhooks: extra copies of each delivery, and a random delay before each one (up to
    # this many ms), which lets deliveries overtake each other.
    duplicate_deliveries: int = 0
    delivery_jitter_ms: int = 0

    def update(self, changes: dict[str, Any]) -> None:
        """Apply ``changes`` (only known, non-negative integer fields); raises ValueError."""
        for key, value in changes.items():
            if key not in self.__dataclass_fields__:
                raise ValueError(f"unknown fault {key!r}")
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"fault {key!r} must be a non-negative integer")
        status = changes.get("fail_status", self.fail_status)
        if not 400 <= status <= 599:
            raise ValueError("fail_status must be an HTTP error status, 400 to 599")
        for key, value in changes.items():
            setattr(self, key, value)

    def clear(self) -> None:
        for name, spec in self.__dataclass_fields__.items():
            setattr(self, name, spec.default)

    def take(self, name: str) -> bool:
        """Use up one occurrence of the fault counted by ``name``, if any is left."""
        left: int = getattr(self, name)
        if left <= 0:
            return False
        setattr(self, name, left - 1)
        return True
