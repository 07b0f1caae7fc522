"""What every learning method provides to the shared :class:`~lwd_core.algo.learner.Learner`.

The learner owns the networks (critic ensemble, value, base flow, fine-tuned policy), their optimisers,
the checkpoint format and the jitted update skeleton. An agent owns what differs between methods: its
losses for the warm-up and training phases, which transitions it learns from, its stage plan (which
phases an offline or online run goes through, for how many updates, with what refresh cadence), how it
acts, and the work between refreshes. Agents are stateless: one instance per method, looked up by name.
The one staged trainer (:mod:`lwd_core.algo.trainer`) runs a plan for the flywheel and the experiment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import jax
import numpy as np

from lwd_core.data.nstep import RunKind

Transitions = dict[str, np.ndarray]
Phase = Literal["pretrain", "warmup", "train"]


@dataclass(frozen=True)
class Stage:
    """One stage of a training run: ``steps`` updates of ``phase`` on the agent's data (``pretrain``: on
    the demonstration rows, the same for every method), with the agent's refresh every
    ``refresh_every`` updates (None: never)."""

    phase: Phase
    steps: int
    refresh_every: int | None = None


@dataclass
class UpdateContext:
    """One update's mutable view: parameters and optimiser states by network name, the metrics it
    reports, and a PRNG key per purpose. ``apply(name, loss_fn)`` takes one gradient step on one network."""

    params: dict[str, Any]
    opt_state: dict[str, Any]
    keys: dict[str, jax.Array]
    step_fn: Callable[[str, dict, dict, Any], tuple[Any, Any]]
    metrics: dict[str, jax.Array] = field(default_factory=dict)

    def apply(self, name: str, loss_fn: Callable[[Any], tuple[jax.Array, dict]]) -> jax.Array:
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(self.params[name])
        self.params[name], self.opt_state[name] = self.step_fn(name, self.params, self.opt_state, grads)
        self.metrics.update(aux)
        return loss


class Agent:
    name: ClassVar[str]
    # Critic/value warm-up with the policy frozen before training (the paper's stage 2).
    warms_up: ClassVar[bool] = False
    # RECAP-style methods relabel transitions from their value every this many updates.
    refresh_every: ClassVar[int | None] = None

    def stages(self, algo: Any, kind: RunKind, steps: int) -> list[Stage]:
        """The run after the pretrained policy: offline, warm-up (where the method has a critic or value)
        then ``steps`` training updates; online, ``steps`` training updates."""
        train = Stage("train", steps, self.refresh_every)
        if kind == "offline" and self.warms_up:
            return [Stage("warmup", algo.warmup_steps), train]
        return [train]

    def update(self, learner: Any, ctx: UpdateContext, batch: dict[str, jax.Array], phase: str) -> None:
        """The warm-up or training losses (phase ``warmup`` or ``train``); pretraining is shared."""
        raise NotImplementedError

    def select_data(self, offline: Transitions | None, online: Transitions | None
                    ) -> tuple[Transitions | None, Transitions | None]:
        """The transitions this method learns from (default: all of them)."""
        return offline, online

    def acting_condition(self) -> int | None:
        """The condition token the policy acts with (None: unconditioned)."""
        return None

    def scalar_value(self, spec: Any) -> bool:
        """Whether the value network is a single expectile output instead of a distribution."""
        return False

    def picks_by_critic(self, spec: Any) -> bool:
        """Whether acting samples several chunks and keeps the critic's best (the release then carries
        the critic)."""
        return False

    def refresh(self, learner: Any, state: Any, replay: Any, algo: Any) -> None:
        """Work every ``refresh_every`` updates of a stage that asks for it (default: none)."""
