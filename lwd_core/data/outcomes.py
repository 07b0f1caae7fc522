"""What the fleet's success means: autonomous or assisted.

An episode in which a person took over at any step is *assisted*: its success is the person's as much
as the policy's. Autonomous success counts only episodes the policy finished alone, over every
episode; assisted success counts the rescued ones. Every fleet number (round reports, robot status,
the canary's evidence) is counted here, so none can call a rescue a success.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from lwd_core.suite import CONTROL_PERIOD_S


def takeovers(interventions: np.ndarray) -> int:
    """How many times a person took over: runs of intervention steps."""
    flags = np.asarray(interventions, bool)
    return int(flags[:1].sum() + (flags[1:] & ~flags[:-1]).sum())


@dataclass
class OutcomeCounts:
    episodes: int = 0
    steps: int = 0
    autonomous_successes: int = 0  # successes with no takeover
    assisted_episodes: int = 0  # episodes with at least one takeover
    assisted_successes: int = 0  # successes with a takeover: rescues
    takeovers: int = 0

    def add(self, success: bool, interventions: np.ndarray) -> OutcomeCounts:
        """One finished episode (its outcome and per-step intervention flags)."""
        count = takeovers(interventions)
        self.episodes += 1
        self.steps += len(interventions)
        self.autonomous_successes += int(success and count == 0)
        self.assisted_episodes += int(count > 0)
        self.assisted_successes += int(success and count > 0)
        self.takeovers += count
        return self

    def __add__(self, other: OutcomeCounts) -> OutcomeCounts:
        return OutcomeCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> OutcomeCounts:
        """From an actor's report. An older actor's counts (``successes`` with rescues in them) say nothing
        about autonomous success: they count as nothing, and counting starts again."""
        data = data or {}
        if "autonomous_successes" not in data and data.get("successes"):
            return cls()
        return cls(**{f.name: int(data.get(f.name, 0)) for f in fields(cls)})

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def autonomous_success(self) -> float | None:
        return self.autonomous_successes / self.episodes if self.episodes else None

    @property
    def assisted_success(self) -> float | None:
        return self.assisted_successes / self.episodes if self.episodes else None

    @property
    def robot_hours(self) -> float:
        return self.steps * CONTROL_PERIOD_S / 3600

    @property
    def takeovers_per_robot_hour(self) -> float | None:
        return self.takeovers / self.robot_hours if self.steps else None

    def rates(self, digits: int = 3) -> dict[str, float | None]:
        """The three numbers a person reads, rounded for showing."""
        def shown(value: float | None) -> float | None:
            return None if value is None else round(value, digits)

        return {"autonomous_success": shown(self.autonomous_success), "assisted_success": shown(self.assisted_success),
                "takeovers_per_robot_hour": shown(self.takeovers_per_robot_hour)}
