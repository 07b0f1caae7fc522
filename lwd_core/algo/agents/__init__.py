"""One file per learning method, and the registry that names them (``algo.method`` / arm methods)."""

from __future__ import annotations

from typing import Literal

from lwd_core.algo.agents.base import Agent, UpdateContext
from lwd_core.algo.agents.bc import BC
from lwd_core.algo.agents.hgdagger import HGDAgger
from lwd_core.algo.agents.lwd import LWD
from lwd_core.algo.agents.recap import RECAP

AGENTS: dict[str, Agent] = {agent.name: agent for agent in (LWD(), BC(), HGDAgger(), RECAP())}
# The registry's names as a type, so a Prefect form offers a choice (a test keeps it equal to AGENTS).
MethodName = Literal["lwd", "bc", "hgdagger", "recap"]


def get_agent(method: str) -> Agent:
    try:
        return AGENTS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; expected one of {tuple(AGENTS)}") from None


__all__ = ["AGENTS", "Agent", "MethodName", "UpdateContext", "get_agent"]
