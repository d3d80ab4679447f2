"""Labels and canary traffic of the online model service (issue 13).

The registry's serving log (``label``/``unlabel``/``canary``/``promote``/``abort`` events,
:meth:`~airflow_ml_provider.ml.registry.ModelRegistry.serving_state`) says, per model, which version
each label names and which version gets what share of the *unpinned* requests (those without
``/versions/V`` or ``/labels/L``). The manager (serving/manager.py) turns that into one immutable
:class:`Routes` snapshot per model, replaced whole on a change, and the request path asks it once.

The split: :class:`CanarySplit` deals shuffled blocks of :data:`BLOCK` decisions holding exactly
``round(percent * BLOCK / 100)`` canary answers, so every block of 1,000 consecutive unpinned
requests (per service process) sends exactly that many to the canary, in random order -- tighter
than independent coin flips (whose share over 10,000 requests at 50 % has a 0.5-point standard
deviation) and without the lock-step pattern of a plain counter (a client alternating two kinds of
request would otherwise always send one kind to the canary). One decision costs a ``list.pop()``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Decisions per shuffled block: the canary share's resolution is 100 / BLOCK = 0.1 point.
BLOCK = 1000

ROUTE_STABLE = "stable"  # the served version (unpinned)
ROUTE_CANARY = "canary"  # the canary's share of unpinned requests
ROUTE_LABEL = "label"  # /labels/L
ROUTE_PINNED = "pinned"  # /versions/V


class CanarySplit:
    """Which unpinned requests go to the canary: exactly ``k`` of every :data:`BLOCK`, shuffled."""

    __slots__ = ("percent", "k", "_block", "_rng")

    def __init__(self, percent: float, seed: int | None = None) -> None:
        if not 0 < percent <= 100:
            raise ValueError(f"canary percent must be in (0, 100], got {percent!r}")
        self.percent = float(percent)
        self.k = max(0, min(BLOCK, round(self.percent * BLOCK / 100)))
        self._rng = random.Random(seed)
        self._block: list[bool] = []

    def _refill(self) -> list[bool]:
        block = [True] * self.k + [False] * (BLOCK - self.k)
        self._rng.shuffle(block)
        self._block = block
        return block

    def take(self) -> bool:
        """True: this request goes to the canary. Thread-safe (``list.pop`` is atomic); a refill race
        between threads at a block boundary costs at most one block's exactness."""
        try:
            return self._block.pop()
        except IndexError:
            return self._refill().pop()


@dataclass(frozen=True)
class Routes:
    """One model's labels and canary, as loaded models (an immutable snapshot)."""

    labels: Mapping[str, Any] = field(default_factory=dict)  # label -> LoadedModel
    label_versions: Mapping[str, int] = field(default_factory=dict)  # label -> version (even if not loaded)
    canary: Any = None  # LoadedModel or None
    canary_version: int | None = None
    split: CanarySplit | None = None
    watermark: int = 0
    shadow: Any = None  # LoadedModel that scores a copy of unpinned requests (never answers), or None
    shadow_version: int | None = None
    shadow_split: CanarySplit | None = None  # which unpinned requests are copied to the shadow

    @property
    def versions(self) -> set[int]:
        """The versions these routes need in memory (kept out of the LRU eviction)."""
        wanted = set(self.label_versions.values())
        if self.canary_version is not None:
            wanted.add(self.canary_version)
        if self.shadow_version is not None:
            wanted.add(self.shadow_version)
        return wanted


NO_ROUTES = Routes()
