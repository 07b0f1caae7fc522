"""Ingest uploaded episodes: validate (GX), quarantine with reasons, deduplicate, append to the online
buffer and label what was appended. Triggered by ``lwd.episode.uploaded`` events (micro-batches) and by a schedule (safety net);
either way it finds its batch by listing ``raw/``, so a lost event only delays an episode."""

from __future__ import annotations

import uuid

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from lwd_core.config import LWDConfig, load_config
from tasks.pipeline import count_uploaded, ingest_next_batch


@flow(name="ingest")
def ingest(limit: int = 0, batch_size: int = 64, lease_s: float = 120.0, config: LWDConfig | None = None) -> dict:
    """Micro-batch after micro-batch until nothing is waiting that another worker holds (or ``limit``
    episodes are seen). Runs at the same time, here or on other machines, share raw/ through leases
    on its shards, so no two handle one episode; ``lease_s`` is how long a dead run's shards wait."""
    config = config or load_config()
    logger = get_run_logger()
    owner = f"ingest-{flow_run.get_id() or uuid.uuid4()}"
    # At most what was waiting when the run started: later uploads are the next run's, and an object
    # that cannot be removed is retried once per run, not forever.
    waiting = count_uploaded(config)
    budget = min(limit, waiting) if limit else waiting
    results: list[dict] = []
    seen = 0
    while seen < budget:
        result = ingest_next_batch(config, owner, len(results), min(batch_size, budget - seen), lease_s)
        if result is None:
            break
        results.append(result)
        seen += result["summary"]["seen"]
    totals = {"seen": 0, "accepted": 0, "quarantined": 0, "duplicates": 0, "transitions_accepted": 0,
              "successes": 0, "intervention_steps": 0}
    reasons: dict[str, int] = {}
    latencies: list[float] = []
    queued: list[float] = []
    for result in results:
        for name in totals:
            totals[name] += result["summary"][name]
        for reason, count in result["summary"]["quarantine_reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
        latencies += result["summary"]["latency_s"]
        queued += result["summary"]["queued_s"]
    quarantined = [q for r in results for q in r["quarantined"]]
    create_table_artifact(key="ingest-counts", table=[totals | {"quarantine_reasons": str(reasons)}],
                          description="Episodes seen, accepted, quarantined and duplicated in this ingest run")
    if quarantined:
        create_table_artifact(key="ingest-quarantine", table=[{"raw_key": q["raw_key"], "reasons": "; ".join(q["reasons"])}
                                                              for q in quarantined],
                              description="Quarantined episodes and why")
    logger.info("ingest: %s; quarantine reasons %s", totals, reasons)
    return totals | {"quarantine_reasons": reasons, "latency_s": sorted(latencies), "queued_s": sorted(queued)}
