"""Mixed offline/online replay with per-task balancing.

Each batch takes ``round(online_ratio * batch)`` rows from the online buffer and the rest from the
offline one (all offline while the online buffer is empty). Within a buffer, rows are drawn by first
picking a task uniformly among the tasks present, then a row uniformly within it, so a long-horizon task
with 10x the rows does not crowd out short tasks. The sampler's RNG state is part of the learner state:
a resumed run draws the same batches it would have drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class TaskIndex:
    """Row indices grouped by task for one buffer."""

    def __init__(self, tasks: np.ndarray):
        self.size = len(tasks)
        order = np.argsort(tasks, kind="stable")
        ids, starts = np.unique(tasks[order], return_index=True)
        bounds = np.append(starts, len(order))
        self.task_ids = ids
        self.groups = [order[bounds[i] : bounds[i + 1]] for i in range(len(ids))]

    def sample(self, rng: np.random.Generator, count: int, balance: bool) -> np.ndarray:
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        if not balance:
            return rng.integers(0, self.size, size=count)
        picks = rng.integers(0, len(self.groups), size=count)
        out = np.empty(count, dtype=np.int64)
        for group_index in np.unique(picks):
            where = picks == group_index
            group = self.groups[group_index]
            out[where] = group[rng.integers(0, len(group), size=int(where.sum()))]
        return out


class MixedReplay:
    def __init__(
        self,
        offline: dict[str, np.ndarray],
        online: dict[str, np.ndarray] | None = None,
        online_ratio: float = 0.5,
        balance_tasks: bool = True,
        seed: int = 0,
    ):
        if not 0.0 <= online_ratio <= 1.0:
            raise ValueError(f"online_ratio must be in [0, 1], got {online_ratio}")
        if not offline or len(offline["obs"]) == 0:
            raise ValueError("the offline buffer is empty")
        self.offline = offline
        self.online = online if online and len(online["obs"]) else None
        self.online_ratio = online_ratio
        self.balance_tasks = balance_tasks
        self.rng = np.random.default_rng(seed)
        self._offline_index = TaskIndex(offline["task"])
        self._online_index = TaskIndex(self.online["task"]) if self.online else None
        self.samples_drawn = 0

    @property
    def sizes(self) -> dict[str, int]:
        return {"offline": len(self.offline["obs"]), "online": len(self.online["obs"]) if self.online else 0}

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        n_online = int(round(self.online_ratio * batch_size)) if self.online else 0
        off = self._offline_index.sample(self.rng, batch_size - n_online, self.balance_tasks)
        batch = {key: value[off] for key, value in self.offline.items()}
        batch["from_online"] = np.zeros(len(off), dtype=bool)
        if n_online:
            on = self._online_index.sample(self.rng, n_online, self.balance_tasks)
            for key in self.offline:
                batch[key] = np.concatenate([batch[key], self.online[key][on]])
            batch["from_online"] = np.concatenate([batch["from_online"], np.ones(n_online, dtype=bool)])
        self.samples_drawn += batch_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "samples_drawn": self.samples_drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.samples_drawn = int(state["samples_drawn"])
