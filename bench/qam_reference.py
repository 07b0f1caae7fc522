"""Load the QAM reference agent (ColinQiyangLi/qam, agents/qam.py) from a local checkout, for
side-by-side learner throughput (bench/learner.py --compare-qam PATH). Nothing is downloaded.

The reference's ``utils/networks.py`` imports distrax and TensorFlow Probability for policy classes
QAM does not use (TFP does not import on this jax), and ``agents/qam.py`` reads its defaults from
ml_collections: stand-in modules provide those names, and using any stand-in raises.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np


class _StandInType(type):
    def __getattr__(cls, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _StandIn


class _StandIn(metaclass=_StandInType):
    """Any class or attribute the reference names but QAM never uses."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a stand-in for distrax/TFP was used: the QAM path should not need it")


def _stand_in_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__getattr__ = lambda attribute: _StandIn  # PEP 562
    return module


def _ml_collections_stand_in() -> types.ModuleType:
    module = types.ModuleType("ml_collections")
    module.ConfigDict = dict
    module.config_dict = types.SimpleNamespace(placeholder=lambda kind: None)
    return module


def load_qam(checkout: str | Path) -> types.ModuleType:
    root = Path(checkout).resolve()
    source = root / "agents" / "qam.py"
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: PATH must be a checkout of github.com/ColinQiyangLi/qam")
    for name in ("distrax", "tensorflow_probability"):
        sys.modules.setdefault(name, _stand_in_module(name))
    try:
        import ml_collections  # noqa: F401
    except ImportError:
        sys.modules["ml_collections"] = _ml_collections_stand_in()
    sys.path.insert(0, str(root))  # for the reference's own `utils` package
    spec = importlib.util.spec_from_file_location("qam_reference_agent", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_agent(module: types.ModuleType, obs_dim: int, action_dim: int, chunk: int, hidden: int, layers: int,
               heads: int, flow_steps: int, batch: int, seed: int = 0):
    config = dict(module.get_config())
    config.update(horizon_length=chunk, action_chunking=True, batch_size=batch, num_qs=heads, flow_steps=flow_steps,
                  actor_hidden_dims=(hidden,) * layers, value_hidden_dims=(hidden,) * layers)
    # One unbatched example, as the reference's main.py passes (``dataset.sample(())``).
    example_obs = np.zeros((obs_dim,), np.float32)
    example_actions = np.zeros((action_dim,), np.float32)
    return module.QAMAgent.create(seed, example_obs, example_actions, config)


def synthetic_batch(rng: np.random.Generator, obs_dim: int, action_dim: int, chunk: int, batch: int) -> dict:
    """The reference's batch layout for action chunks (sample_sequence)."""
    return {
        "observations": rng.normal(size=(batch, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(batch, chunk, action_dim)).astype(np.float32),
        "next_observations": rng.normal(size=(batch, chunk, obs_dim)).astype(np.float32),
        "rewards": -np.ones((batch, chunk), np.float32),
        "masks": np.ones((batch, chunk), np.float32),
        "valid": np.ones((batch, chunk), np.float32),
    }
