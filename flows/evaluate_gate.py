"""Evaluation gate: the candidate vs the current champion on the sim suite, same seeds for both.

Pass rule: :func:`lwd_core.gating.gate_decision` (non-inferiority against the champion). The decision, per-task rates and 95% Wilson
intervals go to MLflow (a gate run plus version tags) and to a Prefect table artifact.
"""

from __future__ import annotations

from prefect import flow

from lwd_core.config import LWDConfig, load_config
from lwd_core.gating import GateResult, gate_decision
from tasks.gate import gate_contenders, log_gate_run, record_gate_result
from tasks.pipeline import evaluate_version


@flow(name="evaluate-gate")
def evaluate_gate(model_version: str = "", episodes_per_task: int = 0, config: LWDConfig | None = None) -> GateResult:
    config = config or load_config()
    candidate, champion = gate_contenders(config, model_version)
    if not candidate:
        raise ValueError("no candidate: name a model version or train one first")
    episodes = episodes_per_task or config.gate.episodes_per_task
    cand = evaluate_version(config, candidate, episodes, config.gate.seed)
    champ = evaluate_version(config, champion, episodes, config.gate.seed) if champion and champion != candidate else None
    verdict = gate_decision(cand, champ, config.gate.tolerance, config.gate.min_success, champion)
    gate = GateResult.of(candidate, champion, verdict, cand, champ)
    log_gate_run(config, gate, episodes)
    record_gate_result(config, gate)
    return gate
