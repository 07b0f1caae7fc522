"""The method names: one registry, and the type the flows' forms offer."""

from __future__ import annotations

from typing import get_args

from lwd_core.algo.agents import AGENTS, MethodName


def test_method_names_are_the_registry():
    assert set(get_args(MethodName)) == set(AGENTS)


def test_flow_forms_offer_the_methods_as_a_choice():
    from prefect.utilities.callables import parameter_schema

    from flows.flywheel import flywheel, flywheel_round
    from flows.train import train

    for flow in (train, flywheel, flywheel_round):
        method = parameter_schema(flow.fn).model_dump()["properties"]["method"]
        assert set(method["enum"]) == set(AGENTS) and method["default"] == "lwd", flow.name
