"""What every learning method provides to the :class:`~lwd_core.algo.learner.Learner` shell.

The learner is the shell: the flow policy every method shares (base, its EMA copy and the fine-tuned
policy, pretrained the same way for all), the optimiser, the jitted update and scan, and serialisation.
An agent is one file, as the QAM/FQL reference agents are: its typed config (:class:`AgentConfig`, every
hyperparameter with a documented default), the networks it adds (a critic, a value), its losses for the
warm-up and training phases, which transitions it learns from, its stage plan (which phases an offline
or online run goes through, for how many updates, with what refresh cadence), how it acts, and the work
between refreshes. One agent instance per learner; the one staged trainer (:mod:`lwd_core.algo.trainer`)
runs its plan for the flywheel and the experiment alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ConfigDict

from lwd_core.algo.flow import euler_sample
from lwd_core.algo.policy import FlowPolicy
from lwd_core.data.nstep import RunKind

if TYPE_CHECKING:
    from lwd_core.algo.learner import Learner, TrainState
    from lwd_core.algo.replay import MixedReplay
    from lwd_core.config import AlgoConfig

Transitions = dict[str, np.ndarray]
Params = dict[str, Any]
Phase = Literal["pretrain", "warmup", "train"]


class AgentConfig(BaseModel):
    """An agent's hyperparameters (``algo.agents.<method>`` in a config file): typed, each with its
    default here, unknown names refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class Stage:
    """One stage of a training run: ``steps`` updates of ``phase`` on the agent's data (``pretrain``: on
    the demonstration rows, the same for every method), with the agent's refresh every
    ``refresh_every`` updates (None: never)."""

    phase: Phase
    steps: int
    refresh_every: int | None = None


@dataclass(frozen=True)
class Shell:
    """What the learner gives every agent: the shared sizes and the flow policy's network."""

    flow: FlowPolicy
    hidden_dims: tuple[int, ...]
    vocab_size: int
    pixels: bool
    dtype: Any  # the hidden layers' matmul dtype
    flow_steps: int

    @property
    def flat_action_dim(self) -> int:
        return self.flow.flat_dim

    def velocity(self, params: Params, obs: jax.Array, tokens: jax.Array,
                 condition: jax.Array | None = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
        """The velocity field v(x, t) of flow parameters ``params`` for these observations."""
        context = self.flow.apply(params, obs, tokens, condition, method=FlowPolicy.context)  # once, not per step
        return lambda x, t: self.flow.apply(params, context, x, t, method=FlowPolicy.velocity_at)

    def sample(self, policy: Params, obs: jax.Array, tokens: jax.Array, noise: jax.Array,
               condition: jax.Array | None = None) -> jax.Array:
        """Action chunks, flattened and clipped to [-1, 1], from the flow ``policy`` and ``noise``."""
        return jnp.clip(euler_sample(self.velocity(policy, obs, tokens, condition), noise, self.flow_steps), -1.0, 1.0)


@dataclass
class UpdateContext:
    """One update's mutable view: parameters and optimiser states by network name, the metrics it
    reports, and a PRNG key per purpose. ``apply(name, loss_fn)`` takes one gradient step on one network."""

    params: Params
    opt_state: dict[str, Any]
    keys: dict[str, jax.Array]
    step_fn: Callable[[str, dict, dict, Any], tuple[Any, Any]]
    metrics: dict[str, jax.Array] = field(default_factory=dict)

    def apply(self, name: str, loss_fn: Callable[[Any], tuple[jax.Array, dict]]) -> jax.Array:
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(self.params[name])
        self.params[name], self.opt_state[name] = self.step_fn(name, self.params, self.opt_state, grads)
        self.metrics.update(aux)
        return loss


ConfigT = TypeVar("ConfigT", bound=AgentConfig)


class Agent(Generic[ConfigT]):
    name: ClassVar[str]
    Config: ClassVar[type[AgentConfig]]
    # The networks this agent adds that an optimiser trains (their parameters under these names).
    trained: ClassVar[tuple[str, ...]] = ()
    # Critic/value warm-up with the policy frozen before training (the paper's stage 2).
    warms_up: ClassVar[bool] = False

    def __init__(self, config: ConfigT, shell: Shell):
        self.config, self.shell = config, shell

    # -- networks ----------------------------------------------------------------------------------
    def init(self, keys: dict[str, jax.Array], obs: jax.Array, tokens: jax.Array, actions: jax.Array) -> Params:
        """The parameters of the networks this agent adds (keys ``critic`` and ``value``; none by default)."""
        return {}

    # -- the stage plan and the data -------------------------------------------------------------------
    def stages(self, algo: AlgoConfig, kind: RunKind, steps: int) -> list[Stage]:
        """The run after the pretrained policy: offline, warm-up (where the method has a critic or value)
        then ``steps`` training updates; online, ``steps`` training updates."""
        train = Stage("train", steps, self.refresh_every)
        if kind == "offline" and self.warms_up:
            return [Stage("warmup", algo.warmup_steps), train]
        return [train]

    @property
    def refresh_every(self) -> int | None:
        """Updates between :meth:`refresh` calls in a training stage (None: never)."""
        return None

    def select_data(self, offline: Transitions | None, online: Transitions | None
                    ) -> tuple[Transitions | None, Transitions | None]:
        """The transitions this method learns from (default: all of them)."""
        return offline, online

    def refresh(self, learner: Learner, state: TrainState, replay: MixedReplay) -> None:
        """Work every ``refresh_every`` updates of a stage that asks for it (default: none)."""

    # -- losses ------------------------------------------------------------------------------------
    def update(self, ctx: UpdateContext, batch: dict[str, jax.Array], phase: Phase) -> None:
        """The warm-up or training losses (phase ``warmup`` or ``train``); pretraining is the shell's."""
        raise NotImplementedError

    # -- acting ------------------------------------------------------------------------------------
    def acting_condition(self) -> int | None:
        """The condition token the policy acts with (None: unconditioned)."""
        return None

    def acting_params(self, params: Params) -> Params:
        """What a robot needs to act (the released ``policy.msgpack``): the fine-tuned flow."""
        return {"policy": params["policy"]}

    def act(self, acting_params: Params, obs: jax.Array, tokens: jax.Array, rng: jax.Array) -> jax.Array:
        """Flattened action chunks (B, chunk * action_dim) in [-1, 1]: :meth:`act_from_noise` on fresh noise."""
        noise = jax.random.normal(rng, self.acting_noise_shape(obs.shape[0]))
        return self.act_from_noise(acting_params, obs, tokens, noise)

    def acting_noise_shape(self, rows: int) -> tuple[int, ...]:
        """The standard normal noise :meth:`act_from_noise` takes for ``rows`` observations."""
        return (rows, self.shell.flat_action_dim)

    def act_from_noise(self, acting_params: Params, obs: jax.Array, tokens: jax.Array, noise: jax.Array) -> jax.Array:
        """The acting function with its randomness as an input (what a portable export runs)."""
        condition = None
        if self.acting_condition() is not None:
            condition = jnp.full(obs.shape[:1], self.acting_condition(), jnp.int32)
        return self.shell.sample(acting_params["policy"], obs, tokens, noise, condition)

    def value_statistics(self, params: Params, obs: jax.Array, tokens: jax.Array) -> dict[str, jax.Array]:
        """The value model's view of these states (``mean`` or ``value``, ...); none by default."""
        return {}
