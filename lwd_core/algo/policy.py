"""VLA-style flow-matching policy over action chunks.

    features = backbone(observation, instruction tokens)        # Observer by default; a pretrained VLA
    v_theta(x_t, t | features, condition)                        # velocity field over a flattened chunk

The action head generates a whole chunk (``chunk`` steps x ``action_dim``) at once by integrating the
velocity field from Gaussian noise (t=0) to an action chunk (t=1). ``condition`` is an optional small
integer token (0 = none) used by the advantage-conditioned RECAP baseline; other methods leave it at 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lwd_core.algo.networks import MLP, Observer

NUM_CONDITIONS = 3  # 0: none/dropped, 1: advantage negative, 2: advantage positive


class TimeEmbedding(nn.Module):
    dim: int = 32

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        freqs = jnp.exp(jnp.linspace(0.0, jnp.log(1000.0), self.dim // 2))
        angles = t[..., None] * freqs
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class FlowPolicy(nn.Module):
    """Velocity field v(x_t, t | obs, instruction, condition) for flattened action chunks.

    The first layer's input is [features, condition, time, x_t]; its weight is split so that the part
    of the observation and condition (:meth:`context`) is computed once per observation and reused at
    every flow step (sampling, adjoint and regression evaluate ~30 steps per update), while each step
    adds only the time and x_t part (:meth:`velocity_at`). The function is the same as one Dense layer
    over the concatenation.
    """

    chunk: int
    action_dim: int
    hidden_dims: Sequence[int]
    vocab_size: int
    pixels: bool = False
    # Any Flax module mapping (obs, tokens) -> features; None builds our Observer (state or pixels).
    backbone: Any = None
    dtype: Any = jnp.float32  # the trunk's matmul dtype (MLP)

    @property
    def flat_dim(self) -> int:
        return self.chunk * self.action_dim

    def setup(self) -> None:
        width = self.hidden_dims[0]
        self.encoder = self.backbone or Observer(self.vocab_size, feature_dim=width, pixels=self.pixels)
        self.condition_embedding = nn.Embed(NUM_CONDITIONS, 16)
        self.time_embedding = TimeEmbedding()
        self.context_projection = nn.Dense(width)  # [features, condition] part of the first layer, with its bias
        self.step_projection = nn.Dense(width, use_bias=False)  # [time, x_t] part
        self.first_norm = nn.LayerNorm()
        self.trunk = MLP(tuple(self.hidden_dims[1:]), self.flat_dim, dtype=self.dtype)

    def context(self, obs: jax.Array, tokens: jax.Array, condition: jax.Array | None = None) -> jax.Array:
        """The first layer's pre-activation from the observation side, (B, hidden_dims[0])."""
        if condition is None:
            condition = jnp.zeros(obs.shape[:-1] if not self.pixels else obs.shape[:-3], dtype=jnp.int32)
        features = self.encoder(obs, tokens)
        return self.context_projection(jnp.concatenate([features, self.condition_embedding(condition)], axis=-1))

    def velocity_at(self, context: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
        t = jnp.broadcast_to(t, x_t.shape[:-1])
        hidden = context + self.step_projection(jnp.concatenate([self.time_embedding(t), x_t], axis=-1))
        return self.trunk(nn.gelu(self.first_norm(hidden)))

    def __call__(
        self, obs: jax.Array, tokens: jax.Array, x_t: jax.Array, t: jax.Array, condition: jax.Array | None = None
    ) -> jax.Array:
        return self.velocity_at(self.context(obs, tokens, condition), x_t, t)
