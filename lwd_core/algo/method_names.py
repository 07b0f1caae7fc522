"""The learning methods' names, apart from the agents themselves: flows name a method in their
parameters (a choice in the Prefect form) without loading JAX, flax and optax. The registry
(:mod:`lwd_core.algo.agents`) must name the same methods; a test keeps them equal."""

from typing import Literal

MethodName = Literal["lwd", "bc", "hgdagger", "recap"]
