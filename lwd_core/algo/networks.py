"""Shared Flax building blocks: MLPs, observation encoders, instruction embedding, critic ensembles."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lwd_core.algo.text import PAD_TOKEN


class MLP(nn.Module):
    """GELU + LayerNorm hidden layers (the QAM reference's critic recipe), linear output."""

    hidden_dims: Sequence[int]
    out_dim: int
    layer_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden_dims:
            x = nn.Dense(width)(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = nn.gelu(x)
        return nn.Dense(self.out_dim)(x)


class InstructionEmbedding(nn.Module):
    """Learned embedding of instruction tokens, mean-pooled over non-padding tokens."""

    vocab_size: int
    dim: int

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        embedded = nn.Embed(self.vocab_size, self.dim)(tokens)
        mask = (tokens != PAD_TOKEN)[..., None].astype(embedded.dtype)
        return (embedded * mask).sum(-2) / jnp.maximum(mask.sum(-2), 1.0)


class StateEncoder(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return nn.gelu(nn.LayerNorm()(nn.Dense(self.dim)(obs)))


class ConvEncoder(nn.Module):
    """Small conv stack for pixel observations (uint8 HWC), used when pixels are on."""

    dim: int
    channels: Sequence[int] = (32, 64, 64)

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        x = pixels.astype(jnp.float32) / 255.0
        for width in self.channels:
            x = nn.gelu(nn.Conv(width, (3, 3), strides=(2, 2))(x))
        x = x.reshape(*x.shape[:-3], -1)
        return nn.gelu(nn.LayerNorm()(nn.Dense(self.dim)(x)))


class Observer(nn.Module):
    """Observation + instruction -> feature vector: the backbone every head sits on.

    This is the seam where a pretrained VLA backbone would plug in: anything mapping
    (observation, instruction tokens) to a feature vector can replace it.
    """

    vocab_size: int
    feature_dim: int = 256
    text_dim: int = 64
    pixels: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array, tokens: jax.Array) -> jax.Array:
        encoder = ConvEncoder(self.feature_dim) if self.pixels else StateEncoder(self.feature_dim)
        text = InstructionEmbedding(self.vocab_size, self.text_dim)(tokens)
        return jnp.concatenate([encoder(obs), text], axis=-1)


class CriticEnsemble(nn.Module):
    """Q(s, a) with ``heads`` independent MLPs (vmapped), each over state, instruction and the whole chunk."""

    heads: int
    hidden_dims: Sequence[int]
    vocab_size: int
    pixels: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array, tokens: jax.Array, actions: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            _CriticHead,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.heads,
        )
        return ensemble(self.hidden_dims, self.vocab_size, self.pixels)(obs, tokens, actions)


class _CriticHead(nn.Module):
    hidden_dims: Sequence[int]
    vocab_size: int
    pixels: bool

    @nn.compact
    def __call__(self, obs: jax.Array, tokens: jax.Array, actions: jax.Array) -> jax.Array:
        features = Observer(self.vocab_size, feature_dim=self.hidden_dims[0], pixels=self.pixels)(obs, tokens)
        x = jnp.concatenate([features, actions], axis=-1)
        return MLP(self.hidden_dims, 1)(x)[..., 0]


def pessimistic(q_heads: jax.Array, std_weight: float) -> jax.Array:
    """Aggregate ensemble heads (axis 0) as mean - std_weight * std."""
    return q_heads.mean(0) - std_weight * q_heads.std(0)
