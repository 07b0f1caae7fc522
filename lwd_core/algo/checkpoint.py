"""Checkpoints: flax msgpack (no pickle) committed with a sha256 manifest.

A checkpoint prefix holds ``train_state.msgpack`` (everything needed to resume exactly: parameters,
optimiser states, target networks, RNG key, step), ``policy.msgpack`` (what actors load),
``policy.onnx`` (the same acting function for a robot without JAX) and ``spec.json``;
``_MANIFEST.json`` is written last and lists the sha256 of each, plus the replay sampler state, so a
resumed run draws the same batches. Loading verifies every hash.
"""

from __future__ import annotations

from typing import Any

from flax import serialization

from lwd_core.algo.learner import Learner, LearnerSpec, TrainState
from lwd_core.algo.portable import export_acting
from lwd_core.data.layout import (
    POLICY_FILE,
    PORTABLE_POLICY_FILE,
    SPEC_FILE,
    STATE_FILE,
)
from lwd_core.store import IntegrityError, ObjectStore, commit_manifest_key, sha256_hex


def save_checkpoint(
    store: ObjectStore, prefix: str, learner: Learner, state: TrainState, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    acting = learner.acting_params(state)
    objects = {
        STATE_FILE: learner.to_bytes(state),
        POLICY_FILE: serialization.to_bytes(acting),
        PORTABLE_POLICY_FILE: export_acting(learner, acting),
        SPEC_FILE: learner.spec.to_json().encode(),
    }
    return store.put_committed(prefix, objects, extra={"step": int(state.step), **(extra or {})})


def load_checkpoint(store: ObjectStore, prefix: str) -> tuple[Learner, TrainState, dict[str, Any]]:
    spec = LearnerSpec.from_json(store.get_committed(prefix, SPEC_FILE).decode())
    learner = Learner(spec)
    state = learner.from_bytes(store.get_committed(prefix, STATE_FILE))
    manifest = store.get_json(commit_manifest_key(prefix))
    return learner, state, manifest


def load_policy(store: ObjectStore, prefix: str, expected_sha256: str | None = None,
                manifest_sha256: str | None = None) -> tuple[Learner, Any]:
    """Acting parameters (:meth:`Learner.acting_params`); ``expected_sha256`` pins the policy file and
    ``manifest_sha256`` the whole checkpoint (spec included) to a signed release."""
    spec = LearnerSpec.from_json(store.get_committed(prefix, SPEC_FILE, manifest_sha256).decode())
    learner = Learner(spec)
    data = store.get_committed(prefix, POLICY_FILE, manifest_sha256)
    if expected_sha256 is not None and sha256_hex(data) != expected_sha256:
        raise IntegrityError(f"{prefix}/{POLICY_FILE} does not match the expected sha256 {expected_sha256}")
    return learner, acting_params_from_bytes(learner, data)


def acting_params_from_bytes(learner: Learner, data: bytes) -> dict[str, Any]:
    """A ``policy.msgpack``; releases written before best-of-N acting hold the bare flow parameters."""
    template = learner.acting_params(learner.template())
    restored = serialization.msgpack_restore(data)
    if "policy" not in restored:  # the earlier layout
        return {"policy": serialization.from_state_dict(template["policy"], restored)}
    return serialization.from_state_dict(template, restored)



def copy_checkpoint(source: ObjectStore, target: ObjectStore, prefix: str) -> None:
    """A committed checkpoint of one store committed under the same prefix in another (hashes checked)."""
    manifest = source.get_json(commit_manifest_key(prefix))
    objects = {name: source.get_committed(prefix, name) for name in manifest["files"]}
    target.put_committed(prefix, objects, extra={k: v for k, v in manifest.items() if k != "files"})
