"""Evaluation gate: the candidate vs the current champion on the sim suite, same seeds for both.

Pass rule: :func:`lwd_core.gating.gate_decision` (non-inferiority against the champion). The decision, per-task rates and 95% Wilson
intervals go to MLflow (a gate run plus version tags) and to a Prefect table artifact.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from lwd_core.config import LWDConfig, load_config
from lwd_core.gating import gate_decision
from tasks import tracking
from tasks.pipeline import evaluate_version


def pending_candidate(config) -> str | None:
    """The newest registered version that has not been gated yet."""
    versions = tracking.client(config).search_model_versions(f"name='{config.tracking.registered_model}'")
    pending = [int(v.version) for v in versions if v.tags.get("gate") == "pending"]
    return str(max(pending)) if pending else None


@flow(name="evaluate-gate")
def evaluate_gate(model_version: str = "", episodes_per_task: int = 0, config: LWDConfig | None = None) -> dict:
    config = config or load_config()
    logger = get_run_logger()
    candidate = model_version or pending_candidate(config)
    if not candidate:
        raise ValueError("no candidate: name a model version or train one first")
    episodes = episodes_per_task or config.gate.episodes_per_task
    champion = tracking.alias_version(config, tracking.CHAMPION)
    cand = evaluate_version(config, candidate, episodes, config.gate.seed)
    champ = evaluate_version(config, champion, episodes, config.gate.seed) if champion and champion != candidate else None
    verdict = gate_decision(cand, champ, config.gate.tolerance, config.gate.min_success, champion)
    passed, rule, candidate_mean = verdict.passed, verdict.rule, verdict.candidate_mean
    decision = {"candidate": candidate, "champion": champion, **verdict.as_dict(),
                "candidate_eval": cand, "champion_eval": champ}
    mlflow = tracking.mlflow_setup(config)
    with mlflow.start_run(run_name=f"gate-v{candidate}"):
        mlflow.set_tags({"kind": "gate", "candidate": candidate, "champion": champion or "", "passed": passed})
        mlflow.log_metrics({"candidate_mean_success": candidate_mean,
                            **{f"success/{t}": r["success_rate"] for t, r in cand["tasks"].items()},
                            **{f"success_{g}": cand[g]["success_rate"] for g in ("short", "long") if g in cand}})
        if champ:
            mlflow.log_metric("champion_mean_success", champ["all"]["success_rate"])
        mlflow.log_dict(decision, "gate.json")
        tracking.log_gate_evidence(config, candidate, decision, verdict)
    tracking.set_version_tags(config, candidate, {"gate": "pass" if passed else "fail",
                                                  "gate_mean_success": f"{candidate_mean:.3f}"})
    rows = [{"task": t, "candidate": r["success_rate"], "candidate_ci": f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]",
             "champion": champ["tasks"][t]["success_rate"] if champ else None} for t, r in cand["tasks"].items()]
    create_table_artifact(key="evaluation-gate", table=rows,
                          description=f"v{candidate} vs champion {champion or '-'}: {'PASS' if passed else 'FAIL'} ({rule})")
    logger.info("gate v%s: %s (%.2f vs %s)", candidate, "PASS" if passed else "FAIL", candidate_mean,
                decision["champion_mean"])
    return decision
