"""Label rewards and return bookkeeping for newly buffered episodes (offline and online)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from lwd_core.config import LWDConfig, load_config
from lwd_core.data.labels import LabellingResult
from tasks.pipeline import label_buffer


@flow(name="label-rewards")
def label_rewards(config: LWDConfig | None = None) -> LabellingResult:
    config = config or load_config()
    result = LabellingResult(offline=label_buffer(config, "offline"), online=label_buffer(config, "online"))
    get_run_logger().info("labelled: %d offline, %d online episodes", result.offline.labelled, result.online.labelled)
    return result
