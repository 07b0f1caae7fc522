"""MLflow pyfunc model over a flow-policy checkpoint, logged as "model from code" (no pickled object).

Input: a DataFrame with ``obs`` (list of floats, padded observation) and ``instruction``; output: one
action chunk per row (list of chunk x action_dim floats). Artifacts: ``policy`` (flax msgpack) and
``spec`` (learner spec JSON).
"""

from __future__ import annotations

import mlflow
import numpy as np


class FlowPolicyModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from lwd_core.algo.checkpoint import acting_params_from_bytes
        from lwd_core.algo.learner import Learner, LearnerSpec

        with open(context.artifacts["spec"]) as handle:
            self.learner = Learner(LearnerSpec.from_json(handle.read()))
        with open(context.artifacts["policy"], "rb") as handle:
            self.params = acting_params_from_bytes(self.learner, handle.read())

    def predict(self, context, model_input, params=None):
        import jax

        from lwd_core.algo.text import tokenize

        obs = np.stack([np.asarray(o, np.float32) for o in model_input["obs"]])
        tokens = np.stack([tokenize(text) for text in model_input["instruction"]])
        seed = int((params or {}).get("seed", 0))
        chunks = self.learner.act(self.params, obs, tokens, jax.random.PRNGKey(seed))
        return [chunk.reshape(-1).tolist() for chunk in chunks]


mlflow.models.set_model(FlowPolicyModel())
