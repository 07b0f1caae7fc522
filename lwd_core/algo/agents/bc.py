"""BC: flow matching of the policy on every transition it is given (no critic, no value)."""

from __future__ import annotations

from typing import Any

import jax

from lwd_core.algo.agents.base import Agent, UpdateContext
from lwd_core.algo.flow import flow_matching_loss


def behaviour_cloning(learner: Any, ctx: UpdateContext, batch: dict[str, jax.Array]) -> None:
    obs, tokens, actions = batch["obs"], batch["tokens"], batch["actions"]

    def bc_loss(params):
        loss = flow_matching_loss(learner.velocity(params, obs, tokens), actions, ctx.keys["policy"])
        return loss, {"bc_loss": loss}

    ctx.apply("policy", bc_loss)


class BC(Agent):
    name = "bc"
    offline_data = "demos"

    def update(self, learner: Any, ctx: UpdateContext, batch: dict[str, jax.Array], phase: str) -> None:
        if phase == "train":
            behaviour_cloning(learner, ctx, batch)
