"""The parent flywheel: offline stage, then K online rounds while the simulated fleet is deployed.

Round 0 (once): generate the offline dataset if the buffer has none -> label -> snapshot -> train
(offline n-step) -> gate -> review (a reviewer, or auto-approve) -> first release to every robot.
Rounds 1..K: the fleet keeps running the champion; when ``fleet.episodes_per_round`` new episodes
have been uploaded: ingest -> label -> snapshot -> train (online, from the last checkpoint) -> gate
-> review -> staged rollout (canary, then all, or rollback).
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.evaluate_gate import evaluate_gate
from flows.fleet import fleet_supervisor, wait_for_fleet
from flows.generate_offline import generate_offline
from flows.ingest import ingest
from flows.label_rewards import label_rewards
from flows.promote import review, watch_champion
from flows.snapshot_buffer import snapshot_buffer
from flows.train import train
from lwd_core.algo.method_names import MethodName
from lwd_core.config import LWDConfig, load_config
from lwd_core.data.ingest import pending_raw
from lwd_core.data.layout import buffer_prefix
from lwd_core.sim.evaluate import paired_comparison
from lwd_core.store import now_us, open_store
from tasks import tracking
from tasks.pipeline import evaluate_version

REVIEW_DEPLOYMENT = "review/review"  # flow name / deployment name in prefect.yaml


def _deploy(config: LWDConfig, version: str | None, gate: dict) -> dict:
    """Gate -> review -> rollout for one candidate; what happened, for the round table.

    In a deployment run the review is its own deployment run (it suspends until a reviewer answers,
    then ships); here, on embedded Prefect, it waits ``promotion.approval_timeout_seconds`` in process.
    """
    from prefect.deployments import run_deployment
    from prefect.runtime import deployment

    if version is None or not gate["passed"]:
        return {"promoted": False, "approved": False, "rollout": "-"}
    if deployment.id and not config.promotion.auto_approve:
        # Not linked as a subflow: Prefect suspends only top-level runs, and the review outlives this round.
        waiting = run_deployment(REVIEW_DEPLOYMENT, parameters={"model_version": version}, timeout=0,
                                 as_subflow=False)
        return {"promoted": True, "approved": False, "rollout": f"awaiting review (flow run {waiting.name})"}
    reviewed = review(version, config=config)
    deployed = reviewed.get("rollout") or {}
    return {"promoted": reviewed["status"] != "refused", "approved": reviewed["status"] == "approved",
            "rollout": deployed.get("status", reviewed["status"]),
            "distribution_latency_p50_s": deployed.get("distribution_latency_p50_s")}


def _row(round_index: int, trained: dict, gate: dict, deployed: dict, fleet: dict) -> dict:
    return {"round": round_index, "stage": trained["stage"], "snapshot": trained["snapshot_id"],
            "model_version": trained["model_version"], "candidate_success": round(gate["candidate_mean"], 3),
            "champion_success": None if gate["champion_mean"] is None else round(gate["champion_mean"], 3),
            "gate": "pass" if gate["passed"] else "fail", **deployed, **fleet}


@flow(name="flywheel", log_prints=True)
def flywheel(rounds: int = 1, robots: int = 0, method: MethodName = "lwd", gate_episodes_per_task: int = 0,
             config: LWDConfig | None = None) -> dict:
    """The operator's knobs: ``rounds``; ``robots`` (0: ``fleet.robots``), which sizes the fleet for
    every stage (ingestion's known robots, canary subsets); ``method`` (an agent name); and
    ``gate_episodes_per_task`` (0: ``gate.episodes_per_task``). They go into the config every subflow
    receives."""
    config = (config or load_config()).model_copy(deep=True)
    if robots:
        config.fleet.robots = robots
    if gate_episodes_per_task:
        config.gate.episodes_per_task = gate_episodes_per_task
    store = open_store(config)
    table: list[dict] = []

    if not store.list(buffer_prefix("offline"), suffix=".parquet"):
        generate_offline(config=config)
    if tracking.alias_version(config, tracking.CHAMPION) is None:
        label_rewards(config=config)
        snapshot = snapshot_buffer(config=config)
        trained = train(snapshot_id=snapshot["snapshot_id"], method=method, resume=False, config=config)
        gate = evaluate_gate(trained["model_version"], config=config)
        table.append(_row(0, trained, gate, _deploy(config, trained["model_version"], gate), {}))
        print(f"round 0 (offline): {table[-1]}")
    if tracking.alias_version(config, tracking.CHAMPION) is None:
        raise RuntimeError("no approved champion: approve one (MLflow UI or `lwd approve`) and run again")

    starting_champion = tracking.alias_version(config, tracking.CHAMPION)
    ids, supervisor = fleet_supervisor(config)
    started_us = now_us()
    stop_fleet = supervisor.run_in_background()
    try:
        up = wait_for_fleet(config, ids, started_us)
        print(f"fleet: {up}/{len(ids)} robots running the champion (logs in {Path(config.data_dir) / 'logs'})")
        for round_index in range(1, rounds + 1):
            wanted, started = config.fleet.episodes_per_round, time.monotonic()
            while len(pending_raw(store)) < wanted:
                if time.monotonic() - started > config.rollout.timeout_seconds:
                    raise TimeoutError(f"the fleet uploaded fewer than {wanted} episodes in "
                                       f"{config.rollout.timeout_seconds:.0f}s; see the actor logs")
                time.sleep(2.0)
            if not config.promotion.auto_approve:
                watch_champion(config=config)  # a reviewer may have moved alias champion in the MLflow UI
            table.append(flywheel_round(round_index, method=method, config=config))
            print(f"round {round_index}: {table[-1]}")
    finally:
        stop_fleet.set()
        supervisor.stop()
    ingest(config=config)  # what the fleet uploaded while stopping

    create_table_artifact(key="flywheel-rounds", table=table, description="Per-round success of the flywheel")
    summary = {"rounds": table, "champion": tracking.alias_version(config, tracking.CHAMPION),
               "learning": learning(config, starting_champion, table[-1]["model_version"] if table else None),
               "where_to_look": where_to_look(config)}
    print(format_table(table))
    if summary["learning"]:
        print(format_learning(summary["learning"]))
    for line in summary["where_to_look"]:
        print(line)
    return summary


@flow(name="flywheel-round")
def flywheel_round(round_index: int = 0, method: MethodName = "lwd", config: LWDConfig | None = None) -> dict:
    """One online round over whatever the deployed fleet uploaded: ingest -> label -> snapshot ->
    train -> gate -> review -> rollout. What the retrain trigger runs when the fleet is managed
    elsewhere (``lwd fleet up``, robots)."""
    config = config or load_config()
    ingested = ingest(config=config)  # labels what it appends; the label stage catches up the rest
    label_rewards(config=config)
    snapshot = snapshot_buffer(config=config)
    trained = train(snapshot_id=snapshot["snapshot_id"], method=method, config=config)
    gate = evaluate_gate(trained["model_version"], config=config)
    fleet = {"fleet_episodes": ingested["accepted"], "fleet_steps": ingested["transitions_accepted"],
             "quarantined": ingested["quarantined"],
             "fleet_success": round(ingested["successes"] / ingested["accepted"], 3) if ingested["accepted"] else None,
             "intervention_steps": ingested["intervention_steps"]}
    return _row(round_index, trained, gate, _deploy(config, trained["model_version"], gate), fleet)


def learning(config, start_version: str | None, last_version: str | None) -> dict | None:
    """The last candidate against the policy the fleet started from, on the same gate episodes (both
    evaluations are cached by the gates, so this costs nothing): did the flywheel learn?"""
    if not start_version or not last_version or start_version == last_version:
        return None
    episodes, seed = config.gate.episodes_per_task, config.gate.seed
    comparison = paired_comparison(evaluate_version(config, start_version, episodes, seed),
                                   evaluate_version(config, last_version, episodes, seed))
    return comparison and {"from_version": start_version, "to_version": last_version, **comparison}


def format_learning(result: dict) -> str:
    return (f"learning: v{result['to_version']} vs v{result['from_version']} (the fleet's starting policy) on the "
            f"same {result['episodes']} gate episodes: {result['before']:.1%} -> {result['after']:.1%} "
            f"({100 * result['change']:+.1f} points; {result['wins']} paired wins, {result['losses']} losses; "
            f"McNemar p = {result['p_value']:.2g})")


def where_to_look(config) -> list[str]:
    return [
        "Prefect UI:  uv run prefect server start  -> http://127.0.0.1:4200 (flow runs, artifacts, events)",
        f"MLflow UI:   uv run mlflow ui --backend-store-uri {config.tracking.mlflow_uri}  -> http://127.0.0.1:5000",
        f"Data:        {config.storage.url} (buffer/, snapshots/, checkpoints/, quarantine/, fleet/)",
        "Fleet:       uv run lwd fleet status",
    ]


def format_table(rows: list[dict]) -> str:
    columns = ["round", "stage", "model_version", "candidate_success", "champion_success", "gate", "approved",
               "rollout", "fleet_episodes", "fleet_success"]
    lines = [" | ".join(f"{c:>17}" for c in columns)]
    for row in rows:
        lines.append(" | ".join(f"{str(row.get(c, '-')):>17}" for c in columns))
    return "\n".join(lines)
