"""BC: flow matching of the policy on the demonstrations (no critic, no value).

Offline it trains as many updates as a method with warm-up does in warm-up and training together (an
equal update budget); online it has nothing new to learn from unless people demonstrate again."""

from __future__ import annotations

from typing import Any

import jax

from lwd_core.algo.agents.base import Agent, RunKind, Stage, Transitions, UpdateContext
from lwd_core.algo.flow import flow_matching_loss


def behaviour_cloning(learner: Any, ctx: UpdateContext, batch: dict[str, jax.Array]) -> None:
    obs, tokens, actions = batch["obs"], batch["tokens"], batch["actions"]

    def bc_loss(params):
        loss = flow_matching_loss(learner.velocity(params, obs, tokens), actions, ctx.keys["policy"])
        return loss, {"bc_loss": loss}

    ctx.apply("policy", bc_loss)


def demonstrations(transitions: Transitions | None) -> Transitions | None:
    """The demonstration rows (None when there are none)."""
    if transitions is None or not transitions["demo"].any():
        return None
    return {key: value[transitions["demo"]] for key, value in transitions.items()}


class BC(Agent):
    name = "bc"

    def stages(self, algo: Any, kind: RunKind, steps: int) -> list[Stage]:
        return [Stage("train", steps + (algo.warmup_steps if kind == "offline" else 0))]

    def select_data(self, offline: Transitions | None, online: Transitions | None
                    ) -> tuple[Transitions | None, Transitions | None]:
        return demonstrations(offline), demonstrations(online)

    def update(self, learner: Any, ctx: UpdateContext, batch: dict[str, jax.Array], phase: str) -> None:
        if phase == "train":
            behaviour_cloning(learner, ctx, batch)
