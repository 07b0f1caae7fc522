"""RECAP-style advantage conditioning (pi*0.6, arXiv 2511.14759).

A distributional value over Monte-Carlo returns; the n-step advantage A = R + gamma^k V(s') - V(s) is
binarised per task at a percentile so the top ``recap_positive_fraction`` is "positive"; interventions
are forced positive. The policy is trained on all data conditioned on that token (dropped at random,
so the unconditioned policy is learned too) and acts with "positive".
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lwd_core.algo import divl
from lwd_core.algo.agents.base import Agent, Transitions, UpdateContext
from lwd_core.algo.flow import flow_matching_loss

CONDITION_NEGATIVE = 1
CONDITION_POSITIVE = 2


def advantage_conditions(transitions: Transitions, value: np.ndarray, next_value: np.ndarray,
                         positive_fraction: float) -> np.ndarray:
    """Advantage tokens per transition from value estimates at s and s' (means of V)."""
    advantage = transitions["reward"] + transitions["discount"] * next_value - value
    conditions = np.full(len(advantage), CONDITION_NEGATIVE, dtype=np.int32)
    for task in np.unique(transitions["task"]):
        rows = transitions["task"] == task
        threshold = np.quantile(advantage[rows], 1.0 - positive_fraction)
        conditions[rows & (advantage >= threshold)] = CONDITION_POSITIVE
    conditions[transitions["intervention"]] = CONDITION_POSITIVE
    return conditions


def refresh_conditions(learner: Any, state: Any, replay: Any, positive_fraction: float,
                       rows_per_call: int = 4096) -> None:
    """Recompute every buffer's advantage tokens from the current value model."""
    def value_mean(obs: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(obs), rows_per_call):
            stats = learner.value_statistics(state, obs[start : start + rows_per_call],
                                             tokens[start : start + rows_per_call])
            parts.append(stats.get("mean", stats.get("value")))
        return np.concatenate(parts)

    for buffer in (replay.offline, replay.online):
        if buffer is not None:
            buffer["condition"] = advantage_conditions(buffer, value_mean(buffer["obs"], buffer["tokens"]),
                                                       value_mean(buffer["next_obs"], buffer["tokens"]),
                                                       positive_fraction)


class RECAP(Agent):
    name = "recap"
    warms_up = True
    refresh_every = 250  # updates between advantage relabellings

    def update(self, learner: Any, ctx: UpdateContext, batch: dict[str, jax.Array], phase: str) -> None:
        spec = learner.spec

        def value_loss(params):
            out = learner.value.apply(params, batch["obs"], batch["tokens"])
            loss = divl.value_loss(out, batch["mc_return"], learner.value_rep, learner.atoms, spec.value_huber_kappa)
            return loss, {"value_loss": loss}

        ctx.apply("value", value_loss)
        if phase != "train":
            return
        keep = jax.random.uniform(ctx.keys["dropout"], batch["condition"].shape) >= spec.recap_condition_dropout
        condition = jnp.where(keep, batch["condition"], 0)

        def policy_loss(params):
            velocity = learner.velocity(params, batch["obs"], batch["tokens"], condition)
            loss = flow_matching_loss(velocity, batch["actions"], ctx.keys["policy"])
            return loss, {"bc_loss": loss}

        ctx.apply("policy", policy_loss)

    def acting_condition(self) -> int | None:
        return CONDITION_POSITIVE

    def refresh(self, learner: Any, state: Any, replay: Any, algo: Any) -> None:
        refresh_conditions(learner, state, replay, algo.recap_positive_fraction)
