"""HG-DAgger (Kelly et al., arXiv 1810.02890): the teleoperator takes over in risky states and only
the takeover segments, plus the initial demonstrations, are aggregated for behaviour cloning. It has no
offline stage: its online rounds start from the pretrained policy (BC on the demonstrations)."""

from __future__ import annotations

import jax

from lwd_core.algo.agents.base import Agent, Phase, Stage, Transitions, UpdateContext
from lwd_core.algo.agents.bc import BCAgentConfig, behaviour_cloning
from lwd_core.config import AlgoConfig
from lwd_core.data.nstep import RunKind


def human_subset(transitions: Transitions) -> Transitions:
    """Demonstration and intervention rows only."""
    mask = transitions["intervention"] | transitions["demo"]
    if not mask.any():
        raise ValueError("HG-DAgger needs intervention or demonstration data; none in these transitions")
    return {key: value[mask] for key, value in transitions.items()}


class HGDAgger(Agent[BCAgentConfig]):
    name = "hgdagger"
    Config = BCAgentConfig

    def stages(self, algo: AlgoConfig, kind: RunKind, steps: int) -> list[Stage]:
        return [] if kind == "offline" else [Stage("train", steps)]

    def select_data(self, offline: Transitions | None, online: Transitions | None
                    ) -> tuple[Transitions | None, Transitions | None]:
        offline = human_subset(offline) if offline is not None else None
        # A fleet round without takeovers adds nothing for HG-DAgger.
        human_online = online is not None and bool((online["intervention"] | online["demo"]).any())
        return offline, human_subset(online) if human_online else None

    def update(self, ctx: UpdateContext, batch: dict[str, jax.Array], phase: Phase) -> None:
        if phase == "train":
            behaviour_cloning(self.shell, ctx, batch)
