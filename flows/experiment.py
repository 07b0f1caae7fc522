"""The paper's comparison on our sim suite, from one offline dataset:

BC, HG-DAgger, RECAP-style, IQL (expectile value, the DIVL ablation) and LWD trained offline on the
same snapshot; then LWD online (K flywheel rounds with the simulated fleet deployed). Every policy is
evaluated on every task with the same seeds and episodes (95% Wilson intervals). Results go to
MLflow (one run per arm + an "experiment" run with the table and the plot), to the object store
(``experiments/<id>/results.json``) and to ``<data_dir>/experiment/`` (JSON, Markdown, PNG).

The online rounds auto-approve passing candidates: the experiment measures learning, not review.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from prefect import flow, get_run_logger

from flows.evaluate_gate import evaluate_gate
from flows.generate_offline import generate_offline
from flows.label_rewards import label_rewards
from flows.promote import promote
from flows.rollout import rollout
from flows.snapshot_buffer import snapshot_buffer
from lwd_core.config import load_config
from lwd_core.data.layout import buffer_prefix
from lwd_core.sim.tasks import CONTROL_PERIOD_S
from lwd_core.store import open_store
from tasks import tracking
from tasks.pipeline import evaluate_checkpoint, train_on_snapshot

# (label, learner method, algo overrides)
OFFLINE_ARMS = [
    ("BC", "bc", {}),
    ("HG-DAgger", "hgdagger", {}),
    ("RECAP", "recap", {}),
    ("IQL (expectile)", "lwd", {"value_model": "expectile"}),
    ("LWD offline", "lwd", {}),
]


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in label.lower()).strip("-")


def _row(label: str, evaluation: dict, extra: dict | None = None) -> dict:
    row = {"method": label, **(extra or {})}
    for group in ("short", "long", "all"):
        if group in evaluation:
            row[group] = evaluation[group]["success_rate"]
            row[f"{group}_ci"] = [round(evaluation[group]["ci_low"], 3), round(evaluation[group]["ci_high"], 3)]
    row["per_task"] = {t: r["success_rate"] for t, r in evaluation["tasks"].items()}
    return row


def markdown_table(rows: list[dict]) -> str:
    tasks = list(rows[0]["per_task"]) if rows else []
    header = ["method", "fleet hours", "short", "long", "all (95% CI)", *tasks]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        ci = row.get("all_ci", [0, 0])
        cells = [row["method"], f"{row.get('fleet_hours', 0):.2f}", f"{row.get('short', 0):.0%}",
                 f"{row.get('long', 0):.0%}", f"{row['all']:.0%} [{ci[0]:.0%}, {ci[1]:.0%}]",
                 *[f"{row['per_task'][t]:.0%}" for t in tasks]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], online: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r["fleet_hours"] for r in online]
    ax.plot(xs, [r["all"] for r in online], "o-", color="black", label="LWD (online rounds)")
    baselines = [r for r in rows if not r["method"].startswith("LWD")]
    for index, row in enumerate(baselines):
        ax.axhline(row["all"], linestyle="--", linewidth=1, color=f"C{index}", label=f"{row['method']} (offline)")
    ax.set_xlabel("fleet experience (robot hours, online)")
    ax.set_ylabel("mean success over the suite")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@flow(name="experiment", log_prints=True)
def experiment(reduced: bool = True, rounds: int = 2, episodes_per_task: int = 0) -> dict:
    """``reduced`` is a label for the record: the budgets come from the config (configs/experiment-*.yaml)."""
    from flows.flywheel import flywheel

    os.environ["LWD_PROMOTION__AUTO_APPROVE"] = "true"
    config = load_config()
    logger = get_run_logger()
    store = open_store(config)
    episodes = episodes_per_task or config.gate.episodes_per_task
    seed = config.gate.seed
    experiment_id = f"exp-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.monotonic()
    if not store.list(buffer_prefix("offline"), suffix=".parquet"):
        generate_offline()
    label_rewards()
    snapshot = snapshot_buffer()
    if tracking.alias_version(config, tracking.CHAMPION) is not None:
        raise RuntimeError("run the experiment on a fresh data dir (LWD_DATA_DIR): a champion already exists")

    rows = []
    for label, method, overrides in OFFLINE_ARMS:
        arm = config.model_copy(deep=True)
        for key, value in overrides.items():
            setattr(arm.algo, key, value)
        is_lwd = label == "LWD offline"
        # LWD offline goes through the normal path (registry, last checkpoint): the online rounds continue it.
        trained = train_on_snapshot(arm, snapshot["snapshot_id"], 0, method, resume=False, register=is_lwd,
                                    label="" if is_lwd else _slug(label))
        evaluation = evaluate_checkpoint(arm, trained["checkpoint"], None, episodes, seed, _slug(label))
        rows.append(_row(label, evaluation, {"fleet_hours": 0.0, "train_seconds": round(trained["seconds"], 1)}))
        print(f"{label}: {rows[-1]['all']:.0%} mean success ({trained['seconds']:.0f}s training)")
        if is_lwd:
            gate = evaluate_gate(trained["model_version"], episodes)
            if gate["passed"] and promote(trained["model_version"])["approved"]:
                rollout(trained["model_version"])

    online = [{"round": 0, "fleet_hours": 0.0, "all": rows[-1]["all"]}]
    if rounds > 0 and tracking.alias_version(config, tracking.CHAMPION):
        result = flywheel(rounds=rounds)
        hours = 0.0
        for row in result["rounds"]:
            hours += row.get("fleet_steps", 0) * CONTROL_PERIOD_S / 3600
            online.append({"round": row["round"], "fleet_hours": hours, "all": row["candidate_success"],
                           "fleet_episodes": row.get("fleet_episodes")})
        champion = tracking.alias_version(config, tracking.CHAMPION)
        tags = tracking.version_tags(config, champion)
        final = evaluate_checkpoint(config, tags["checkpoint"], tags["policy_sha256"], episodes, seed, "lwd-online")
        rows.append(_row(f"LWD online ({rounds} rounds)", final, {"fleet_hours": hours, "champion": champion}))

    out_dir = Path(config.data_dir).resolve() / "experiment"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"experiment_id": experiment_id, "snapshot_id": snapshot["snapshot_id"], "episodes_per_task": episodes,
               "seed": seed, "reduced": reduced, "rows": rows, "online": online,
               "minutes": round((time.monotonic() - started) / 60, 1)}
    table = markdown_table(rows)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(table + "\n")
    plot(rows, online, out_dir / "success_vs_experience.png")
    store.put_json(f"experiments/{experiment_id}/results.json", results)
    mlflow = tracking.mlflow_setup(config)
    with mlflow.start_run(run_name=experiment_id):
        mlflow.set_tags({"kind": "experiment", "snapshot_id": snapshot["snapshot_id"]})
        mlflow.log_metrics({f"success/{_slug(r['method'])}": r["all"] for r in rows})
        mlflow.log_dict(results, "results.json")
        mlflow.log_text(table, "results.md")
        mlflow.log_artifact(str(out_dir / "success_vs_experience.png"))
    print(table)
    logger.info("experiment %s done in %.1f min; results in %s", experiment_id, results["minutes"], out_dir)
    return results
