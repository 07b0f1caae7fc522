"""RECAP-style advantage conditioning (pi*0.6, arXiv 2511.14759).

A distributional value over Monte-Carlo returns; the n-step advantage A = R + gamma^k V(s') - V(s) is
binarised per task at a percentile so the top ``positive_fraction`` is "positive"; interventions are
forced positive. The policy is trained on all data conditioned on that token (dropped at random, so the
unconditioned policy is learned too) and acts with "positive". The tokens are recomputed from the
current value every ``refresh_every`` updates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field

from lwd_core.algo import divl
from lwd_core.algo.agents.base import Agent, Params, Phase, Shell, Transitions, UpdateContext
from lwd_core.algo.flow import flow_matching_loss

if TYPE_CHECKING:
    from lwd_core.algo.learner import Learner, TrainState
    from lwd_core.algo.replay import MixedReplay

CONDITION_NEGATIVE = 1
CONDITION_POSITIVE = 2


class RECAPAgentConfig(divl.ValueDistributionConfig):
    # Share of each task's transitions labelled "advantage positive".
    positive_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    # Chance that a training row's advantage token is dropped (the unconditioned policy is learned too).
    condition_dropout: float = Field(default=0.3, ge=0.0, lt=1.0)
    # Updates between advantage relabellings.
    refresh_every: int = Field(default=250, ge=1)


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


def refresh_conditions(learner: Learner, state: TrainState, replay: MixedReplay, positive_fraction: float,
                       rows_per_call: int = 4096) -> None:
    """Recompute every buffer's advantage tokens from the current value model."""
    def value_mean(obs: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(obs), rows_per_call):
            stats = learner.value_statistics(state, obs[start : start + rows_per_call],
                                             tokens[start : start + rows_per_call])
            parts.append(stats["mean"])
        return np.concatenate(parts)

    for buffer in (replay.offline, replay.online):
        if buffer is not None:
            buffer["condition"] = advantage_conditions(buffer, value_mean(buffer["obs"], buffer["tokens"]),
                                                       value_mean(buffer["next_obs"], buffer["tokens"]),
                                                       positive_fraction)


class RECAP(Agent[RECAPAgentConfig]):
    name = "recap"
    Config = RECAPAgentConfig
    trained = ("value",)
    warms_up = True

    def __init__(self, config: RECAPAgentConfig, shell: Shell):
        super().__init__(config, shell)
        self.value = config.network(shell)
        self.atoms = config.atoms()

    def init(self, keys: dict[str, jax.Array], obs: jax.Array, tokens: jax.Array, actions: jax.Array) -> Params:
        return {"value": self.value.init(keys["value"], obs, tokens)}

    @property
    def refresh_every(self) -> int | None:
        return self.config.refresh_every

    def refresh(self, learner: Learner, state: TrainState, replay: MixedReplay) -> None:
        refresh_conditions(learner, state, replay, self.config.positive_fraction)

    def update(self, ctx: UpdateContext, batch: dict[str, jax.Array], phase: Phase) -> None:
        config = self.config

        def value_loss(params):
            out = self.value.apply(params, batch["obs"], batch["tokens"])
            loss = divl.value_loss(out, batch["mc_return"], config.value_representation, self.atoms,
                                   config.value_huber_kappa)
            return loss, {"value_loss": loss}

        ctx.apply("value", value_loss)
        if phase != "train":
            return
        keep = jax.random.uniform(ctx.keys["dropout"], batch["condition"].shape) >= config.condition_dropout
        condition = jnp.where(keep, batch["condition"], 0)

        def policy_loss(params):
            velocity = self.shell.velocity(params, batch["obs"], batch["tokens"], condition)
            loss = flow_matching_loss(velocity, batch["actions"], ctx.keys["policy"])
            return loss, {"bc_loss": loss}

        ctx.apply("policy", policy_loss)

    def acting_condition(self) -> int | None:
        return CONDITION_POSITIVE

    def value_statistics(self, params: Params, obs: jax.Array, tokens: jax.Array) -> dict[str, jax.Array]:
        probs, h_norm = divl.value_statistics(self.value.apply(params["value"], obs, tokens),
                                              self.config.value_representation, self.atoms)
        return {"mean": (probs * self.atoms).sum(-1), "entropy": h_norm}
