"""Label rewards and return bookkeeping for newly buffered episodes (offline and online)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from lwd_core.config import LWDConfig, load_config
from tasks.pipeline import label_buffer


@flow(name="label-rewards")
def label_rewards(config: LWDConfig | None = None) -> dict:
    config = config or load_config()
    results = {kind: label_buffer(config, kind) for kind in ("offline", "online")}
    get_run_logger().info("labelled: %s", {k: v["labelled"] for k, v in results.items()})
    return results
