"""The acting function exported as ONNX (lwd_core/algo/portable.py) acts as the JAX policy does."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from lwd_core.algo.learner import Learner, LearnerSpec
from lwd_core.algo.portable import export_acting, trace_to_onnx
from lwd_core.config import AlgoConfig
from lwd_core.robot import PortablePolicy
from lwd_core.suite import ACTION_DIM, OBS_DIM

METHODS = {
    "lwd-best-of-4": ("lwd", {"critic_heads": 2, "value_size": 11, "best_of_n": 4}),
    "lwd": ("lwd", {"critic_heads": 2, "value_size": 11}),
    "bc": ("bc", {}),
    "recap": ("recap", {"value_size": 11}),  # acts with its positive-advantage condition token
}


@pytest.mark.parametrize("name", METHODS)
def test_the_portable_policy_acts_as_the_jax_policy(name):
    method, agent = METHODS[name]
    algo = AlgoConfig(hidden_dims=[32, 32], flow_steps=3).with_agent(method, **agent)
    learner = Learner(LearnerSpec.from_config(algo, OBS_DIM, ACTION_DIM, method))
    params = learner.acting_params(learner.init(3))
    portable = PortablePolicy(export_acting(learner, params))
    rng = np.random.default_rng(0)
    for _ in range(4):
        obs = rng.normal(size=(1, OBS_DIM)).astype(np.float32)
        tokens = rng.integers(0, 1024, size=(1, 16)).astype(np.int32)
        noise = rng.normal(size=learner.agent.acting_noise_shape(1)).astype(np.float32)
        expected = np.asarray(learner.agent.act_from_noise(params, obs, tokens, noise)).reshape(-1, ACTION_DIM)
        np.testing.assert_allclose(portable.act_from_noise(obs, tokens, noise), expected, atol=1e-4)
    assert portable.noise_shape == learner.agent.acting_noise_shape(1)


def test_a_function_the_export_cannot_translate_is_refused_by_name():
    with pytest.raises(NotImplementedError, match="cumsum"):
        trace_to_onnx(lambda x: jnp.cumsum(x, axis=-1), {"x": np.zeros((1, 4), np.float32)}, {})


def test_custom_derivative_calls_and_powers_translate_on_constants_and_inputs():
    import jax

    weight = np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(4, 3)

    def fn(x):
        folded = jax.nn.relu(weight) + jax.nn.softplus(weight)  # custom_jvp calls on parameters alone
        y = x @ folded
        return jax.nn.relu(y) + y**3 - y**5 + jax.lax.integer_pow(y, 0) + jax.lax.integer_pow(y + 2.0, -2)

    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    import onnxruntime

    session = onnxruntime.InferenceSession(trace_to_onnx(fn, {"x": x}, {}), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], np.asarray(fn(x)), rtol=1e-5, atol=1e-5)
