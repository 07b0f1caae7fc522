"""BC: flow matching of the policy on the demonstrations (no critic, no value).

Offline it trains as many updates as a method with warm-up does in warm-up and training together (an
equal update budget); online it has nothing new to learn from unless people demonstrate again."""

from __future__ import annotations

import jax

from lwd_core.algo.agents.base import Agent, AgentConfig, Phase, Shell, Stage, Transitions, UpdateContext
from lwd_core.algo.flow import flow_matching_loss
from lwd_core.config import AlgoConfig
from lwd_core.data.nstep import RunKind


class BCAgentConfig(AgentConfig):
    """Behaviour cloning has no hyperparameters of its own: the shell's flow and optimiser settings."""


def behaviour_cloning(shell: Shell, ctx: UpdateContext, batch: dict[str, jax.Array]) -> None:
    obs, tokens, actions = batch["obs"], batch["tokens"], batch["actions"]

    def bc_loss(params):
        loss = flow_matching_loss(shell.velocity(params, obs, tokens), actions, ctx.keys["policy"])
        return loss, {"bc_loss": loss}

    ctx.apply("policy", bc_loss)


def demonstrations(transitions: Transitions | None) -> Transitions | None:
    """The demonstration rows (None when there are none)."""
    if transitions is None or not transitions["demo"].any():
        return None
    return {key: value[transitions["demo"]] for key, value in transitions.items()}


class BC(Agent[BCAgentConfig]):
    name = "bc"
    Config = BCAgentConfig

    def stages(self, algo: AlgoConfig, kind: RunKind, steps: int) -> list[Stage]:
        return [Stage("train", steps + (algo.warmup_steps if kind == "offline" else 0))]

    def select_data(self, offline: Transitions | None, online: Transitions | None
                    ) -> tuple[Transitions | None, Transitions | None]:
        return demonstrations(offline), demonstrations(online)

    def update(self, ctx: UpdateContext, batch: dict[str, jax.Array], phase: Phase) -> None:
        if phase == "train":
            behaviour_cloning(self.shell, ctx, batch)
