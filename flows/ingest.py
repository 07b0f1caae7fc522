"""Ingest uploaded episodes: validate (GX), quarantine with reasons, deduplicate, append to the online
buffer and label what was appended. Triggered by ``lwd.episode.uploaded`` events (micro-batches) and by a schedule (safety net);
either way it finds its batch by listing ``raw/``, so a lost event only delays an episode."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from lwd_core.config import LWDConfig, load_config
from tasks.pipeline import ingest_micro_batch, list_uploaded


@flow(name="ingest")
def ingest(limit: int = 0, batch_size: int = 64, partition: int = 0, partitions: int = 1,
           config: LWDConfig | None = None) -> dict:
    """With ``partitions`` > 1, this run takes only its partition of raw/ (by episode id), so that
    several ingest workers share the uploads without ever handling the same episode."""
    config = config or load_config()
    logger = get_run_logger()
    keys = list_uploaded(config, limit, partition, partitions)
    batches = [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]
    results = [ingest_micro_batch(config, batch, index) for index, batch in enumerate(batches)]
    totals = {"seen": 0, "accepted": 0, "quarantined": 0, "duplicates": 0, "transitions_accepted": 0,
              "successes": 0, "intervention_steps": 0}
    reasons: dict[str, int] = {}
    latencies: list[float] = []
    for result in results:
        for name in totals:
            totals[name] += result["summary"][name]
        for reason, count in result["summary"]["quarantine_reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
        latencies += result["summary"]["latency_s"]
    quarantined = [q for r in results for q in r["quarantined"]]
    create_table_artifact(key="ingest-counts", table=[totals | {"quarantine_reasons": str(reasons)}],
                          description="Episodes seen, accepted, quarantined and duplicated in this ingest run")
    if quarantined:
        create_table_artifact(key="ingest-quarantine", table=[{"raw_key": q["raw_key"], "reasons": "; ".join(q["reasons"])}
                                                              for q in quarantined],
                              description="Quarantined episodes and why")
    logger.info("ingest: %s; quarantine reasons %s", totals, reasons)
    return totals | {"quarantine_reasons": reasons, "latency_s": sorted(latencies)}
