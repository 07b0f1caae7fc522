"""One file per learning method, and the registry that names them (``algo.method`` / arm methods)."""

from __future__ import annotations

from lwd_core.algo.agents.base import Agent, UpdateContext
from lwd_core.algo.agents.bc import BC
from lwd_core.algo.agents.hgdagger import HGDAgger
from lwd_core.algo.agents.lwd import LWD
from lwd_core.algo.agents.recap import RECAP
from lwd_core.algo.method_names import MethodName

AGENTS: dict[str, Agent] = {agent.name: agent for agent in (LWD(), BC(), HGDAgger(), RECAP())}


def get_agent(method: str) -> Agent:
    try:
        return AGENTS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; expected one of {tuple(AGENTS)}") from None


__all__ = ["AGENTS", "Agent", "MethodName", "UpdateContext", "get_agent"]
