"""One file per learning method, and the registry that names them (``algo.method`` / arm methods)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from lwd_core.algo.agents.base import Agent, AgentConfig, Shell, Stage, UpdateContext
from lwd_core.algo.agents.bc import BC
from lwd_core.algo.agents.hgdagger import HGDAgger
from lwd_core.algo.agents.lwd import LWD
from lwd_core.algo.agents.recap import RECAP
from lwd_core.algo.method_names import MethodName

AGENTS: dict[str, type[Agent]] = {agent.name: agent for agent in (LWD, BC, HGDAgger, RECAP)}


def get_agent(method: str) -> type[Agent]:
    try:
        return AGENTS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; expected one of {tuple(AGENTS)}") from None


def agent_config(method: str, settings: dict[str, Any]) -> AgentConfig:
    """A method's config from its settings (``algo.agents.<method>``; what is not set keeps the agent's
    default). An unknown or invalid setting is a clear error naming it."""
    agent = get_agent(method)
    try:
        return agent.Config(**settings)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or method}: {e['msg']}" for e in error.errors())
        raise ValueError(f"algo.agents.{method}: {problems}") from None


__all__ = ["AGENTS", "Agent", "AgentConfig", "MethodName", "Shell", "Stage", "UpdateContext", "agent_config",
           "get_agent"]
