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
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel

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
from lwd_core.data.ingest import IngestSummary, pending_raw
from lwd_core.data.layout import buffer_prefix
from lwd_core.gating import GateResult
from lwd_core.promotion import ReviewStatus, TrainedVersion
from lwd_core.sim.evaluate import paired_comparison
from lwd_core.store import now_us, open_store
from tasks.pipeline import evaluate_version
from tasks.promotion import champion_version, read_version

REVIEW_DEPLOYMENT = "review/review"  # flow name / deployment name in prefect.yaml


class Deployment(BaseModel):
    """What became of a round's candidate after its gate."""

    promoted: bool = False
    approved: bool = False
    rollout: str = "-"
    distribution_latency_p50_s: float | None = None


class FleetRound(BaseModel):
    """What the fleet uploaded in a round (round 0 trains on the offline dataset: none)."""

    fleet_episodes: int | None = None
    fleet_steps: int | None = None
    quarantined: int | None = None
    # Autonomous: finished by the policy alone; assisted: rescued by the teleoperator (never "success").
    autonomous_success: float | None = None
    assisted_success: float | None = None
    takeovers_per_robot_hour: float | None = None
    intervention_steps: int | None = None

    @classmethod
    def of(cls, ingested: IngestSummary) -> FleetRound:
        return cls(fleet_episodes=ingested.rollouts, fleet_steps=ingested.rollout_steps,
                   quarantined=ingested.quarantined, intervention_steps=ingested.intervention_steps,
                   **ingested.fleet_outcomes.rates())


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


class RoundRecord(Deployment, FleetRound):
    """One row of the flywheel's round table."""

    round: int
    stage: str
    snapshot: str
    model_version: str
    candidate_success: float
    champion_success: float | None
    gate: str
    gate_run_id: str = ""

    @classmethod
    def of(cls, round_index: int, trained: TrainedVersion, gate: GateResult, deployed: Deployment,
           fleet: FleetRound, gate_run_id: str) -> RoundRecord:
        return cls(round=round_index, stage=trained.stage, snapshot=trained.snapshot_id,
                   model_version=trained.model_version, candidate_success=round(gate.candidate_mean, 3),
                   champion_success=None if gate.champion_mean is None else round(gate.champion_mean, 3),
                   gate="pass" if gate.passed else "fail", gate_run_id=gate_run_id, **deployed.model_dump(),
                   **fleet.model_dump())

    def summary_line(self) -> str:
        """The round for a log line a person reads."""
        fleet = ("" if self.fleet_episodes is None else
                 f"; fleet {self.fleet_episodes} episodes: autonomous {_share(self.autonomous_success)}, "
                 f"assisted {_share(self.assisted_success)}")
        return (f"round {self.round} ({self.stage}): v{self.model_version} {_share(self.candidate_success)} vs "
                f"champion {_share(self.champion_success)}, gate {self.gate}, "
                f"{'approved' if self.approved else 'not approved'}, rollout {self.rollout}{fleet}")

    def markdown(self, config: LWDConfig) -> str:
        """The round's report for the Prefect UI: a narrow table and links into MLflow."""
        tracking = config.tracking
        version = tracking.markdown_link(f"v{self.model_version}", tracking.version_route(self.model_version))
        gate = tracking.markdown_link(self.gate, tracking.run_route(self.gate_run_id)) if self.gate_run_id else self.gate
        rows = [("candidate", f"{version}: {_share(self.candidate_success)} on the gate"),
                ("champion", _share(self.champion_success)), ("gate", gate),
                ("review", "approved" if self.approved else ("promoted" if self.promoted else "-")),
                ("rollout", f"{self.rollout} (the version page has the canary's decision)"),
                ("fleet episodes this round", "-" if self.fleet_episodes is None else str(self.fleet_episodes)),
                ("autonomous success (no rescue)", _share(self.autonomous_success)),
                ("assisted success (rescued by the teleoperator)", _share(self.assisted_success)),
                ("takeovers per robot hour", "-" if self.takeovers_per_robot_hour is None
                 else f"{self.takeovers_per_robot_hour:.1f}")]
        return "\n".join([f"### Flywheel round {self.round} ({self.stage})", "", "| | |", "|---|---|",
                          *(f"| {name} | {value} |" for name, value in rows)])


class FlywheelResult(BaseModel):
    rounds: list[RoundRecord]
    champion: str | None
    learning: dict | None  # :func:`learning`
    where_to_look: list[str]


def _deploy(config: LWDConfig, gate: GateResult) -> Deployment:
    """Gate -> review -> rollout for one candidate; what happened, for the round table.

    In a deployment run the review is its own deployment run (it suspends until a reviewer answers,
    then ships); here, on embedded Prefect, it waits ``promotion.approval_timeout_seconds`` in process.
    """
    from prefect.deployments import run_deployment
    from prefect.runtime import deployment

    if not gate.passed:
        return Deployment()
    if deployment.id and not config.promotion.auto_approve:
        # Not linked as a subflow: Prefect suspends only top-level runs, and the review outlives this round.
        waiting = run_deployment(REVIEW_DEPLOYMENT, parameters={"model_version": gate.candidate}, timeout=0,
                                 as_subflow=False)
        return Deployment(promoted=True, rollout=f"awaiting review (flow run {waiting.name})")
    reviewed = review(gate.candidate, config=config)
    return Deployment(promoted=reviewed.status is not ReviewStatus.REFUSED,
                      approved=reviewed.status is ReviewStatus.APPROVED,
                      rollout=reviewed.rollout.status if reviewed.rollout else reviewed.status,
                      distribution_latency_p50_s=reviewed.rollout and reviewed.rollout.distribution_latency_p50_s)


def _finish_round(config: LWDConfig, round_index: int, trained: TrainedVersion, gate: GateResult,
                  fleet: FleetRound) -> RoundRecord:
    """The candidate's review and rollout after its gate, and the round's row (linking its gate run)."""
    return RoundRecord.of(round_index, trained, gate, _deploy(config, gate), fleet,
                          read_version(config, trained.model_version).gate_run_id)


def _report_round(config: LWDConfig, record: RoundRecord) -> None:
    print(record.summary_line())
    create_markdown_artifact(key=f"flywheel-round-{record.round}", markdown=record.markdown(config),
                             description=f"Flywheel round {record.round}")


def _trained(trained: TrainedVersion | None) -> TrainedVersion:
    if trained is None:  # only a multi-host follower process returns None, and the flywheel leads
        raise RuntimeError("the training run registered no model version")
    return trained


@flow(name="flywheel", log_prints=True)
def flywheel(rounds: int = 1, robots: int = 0, method: MethodName = "lwd", gate_episodes_per_task: int = 0,
             config: LWDConfig | None = None) -> FlywheelResult:
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
    table: list[RoundRecord] = []

    if not store.list(buffer_prefix("offline"), suffix=".parquet"):
        generate_offline(config=config)
    if champion_version(config) is None:
        label_rewards(config=config)
        snapshot = snapshot_buffer(config=config)
        trained = _trained(train(snapshot_id=snapshot.snapshot_id, method=method, resume=False, config=config))
        gate = evaluate_gate(trained.model_version, config=config)
        table.append(_finish_round(config, 0, trained, gate, FleetRound()))
        _report_round(config, table[-1])
    starting_champion = champion_version(config)
    if starting_champion is None:
        raise RuntimeError("no approved champion: approve one (MLflow UI or `lwd approve`) and run again")

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
            _report_round(config, table[-1])
    finally:
        stop_fleet.set()
        supervisor.stop()
    ingest(config=config)  # what the fleet uploaded while stopping

    create_table_artifact(key="flywheel-rounds", table=table_rows(table),
                          description="Per-round success of the flywheel (gate success of each round's candidate; "
                                      "the fleet's autonomous and assisted success; round 0 has no champion yet)")
    summary = FlywheelResult(rounds=table, champion=champion_version(config),
                             learning=learning(config, starting_champion, table[-1].model_version if table else None),
                             where_to_look=where_to_look(config))
    print(format_table(table))
    if summary.learning:
        print(format_learning(summary.learning))
    for line in summary.where_to_look:
        print(line)
    return summary


@flow(name="flywheel-round")
def flywheel_round(round_index: int = 0, method: MethodName = "lwd", config: LWDConfig | None = None) -> RoundRecord:
    """One online round over whatever the deployed fleet uploaded: ingest -> label -> snapshot ->
    train -> gate -> review -> rollout. What the retrain trigger runs when the fleet is managed
    elsewhere (``lwd fleet up``, robots)."""
    config = config or load_config()
    ingested = ingest(config=config)  # labels what it appends; the label stage catches up the rest
    label_rewards(config=config)
    snapshot = snapshot_buffer(config=config)
    trained = _trained(train(snapshot_id=snapshot.snapshot_id, method=method, config=config))
    gate = evaluate_gate(trained.model_version, config=config)
    return _finish_round(config, round_index, trained, gate, FleetRound.of(ingested))


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
        f"MLflow UI:   uv run mlflow ui --backend-store-uri {config.tracking.mlflow_uri}  -> "
        f"{config.tracking.ui_url or 'http://127.0.0.1:5000'}",
        f"Data:        {config.storage.url} (buffer/, snapshots/, checkpoints/, quarantine/, fleet/)",
        "Fleet:       uv run lwd fleet status",
    ]


ROUND_COLUMNS = ("round", "version", "candidate", "champion", "gate, review, rollout", "fleet eps", "autonomous",
                 "assisted")


def table_rows(rows: list[RoundRecord]) -> list[dict[str, str]]:
    """The round table's cells, narrow enough for a 1,400 px page: the columns a reader compares, "-"
    where a round has no value."""
    return [dict(zip(ROUND_COLUMNS, (
        f"{row.round} ({row.stage})", f"v{row.model_version}", _share(row.candidate_success), _share(row.champion_success),
        f"{row.gate}, {'approved' if row.approved else 'not approved'}, {row.rollout}",
        "-" if row.fleet_episodes is None else str(row.fleet_episodes), _share(row.autonomous_success),
        _share(row.assisted_success)), strict=True)) for row in rows]


def format_table(rows: list[RoundRecord]) -> str:
    """The round table, each column as wide as its widest cell (it fits a terminal)."""
    cells = [list(ROUND_COLUMNS)] + [list(row.values()) for row in table_rows(rows)]
    widths = [max(len(line[index]) for line in cells) for index in range(len(ROUND_COLUMNS))]
    return "\n".join(" | ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in cells)
