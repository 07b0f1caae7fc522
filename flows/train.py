"""Train DIVL + QAM (or a baseline) on a snapshot, from the last checkpoint; register the result."""

from __future__ import annotations

from prefect import flow

from lwd_core.algo.method_names import MethodName
from lwd_core.config import LWDConfig, load_config
from lwd_core.promotion import TrainedVersion
from tasks.pipeline import train_on_snapshot


@flow(name="train")
def train(snapshot_id: str = "", steps: int = 0, method: MethodName = "lwd", resume: bool = True,
          config: LWDConfig | None = None) -> TrainedVersion | None:
    """``snapshot_id`` empty: the latest snapshot; ``steps``: extraction updates (0: the config's offline or
    online budget; an offline run adds pretraining and warm-up on top). None on a multi-host follower
    process (process 0 registers the version)."""
    return train_on_snapshot(config or load_config(), snapshot_id, steps, method, resume)
