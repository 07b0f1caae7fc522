"""Ingest uploaded episodes: validate (GX), quarantine with reasons, deduplicate, append to the online
buffer and label what was appended. Triggered by ``lwd.episode.uploaded`` events (micro-batches) and by a schedule (safety net);
either way it finds its batch by listing ``raw/``, so a lost event only delays an episode."""

from __future__ import annotations

import uuid

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from lwd_core.config import LWDConfig, load_config
from lwd_core.data.ingest import IngestBatch, IngestSummary
from tasks.pipeline import count_uploaded, ingest_next_batch


@flow(name="ingest")
def ingest(limit: int = 0, batch_size: int = 64, lease_s: float = 120.0, config: LWDConfig | None = None) -> IngestSummary:
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
    batches: list[IngestBatch] = []
    seen = 0
    while seen < budget:
        batch = ingest_next_batch(config, owner, len(batches), min(batch_size, budget - seen), lease_s)
        if batch is None:
            break
        batches.append(batch)
        seen += batch.summary.seen
    totals = IngestSummary.total([batch.summary for batch in batches])
    counts = totals.model_dump(exclude={"quarantine_reasons", "latency_s", "queued_s"})
    quarantined = [episode for batch in batches for episode in batch.quarantined]
    create_table_artifact(key="ingest-counts", table=[counts | {"quarantine_reasons": str(totals.quarantine_reasons)}],
                          description="Episodes seen, accepted, quarantined and duplicated in this ingest run")
    if quarantined:
        create_table_artifact(key="ingest-quarantine", table=[{"raw_key": q.raw_key, "reasons": "; ".join(q.reasons)}
                                                              for q in quarantined],
                              description="Quarantined episodes and why")
    logger.info("ingest: %s", totals.describe())
    return totals
