"""Data-parallel training over every JAX device, on one host or many.

One mesh axis, ``data``: parameters and optimiser state are replicated, each batch is split along its
first dimension, and XLA inserts the gradient all-reduce (GSPMD), so the update code is unchanged.
On several hosts, every process calls :func:`initialize_from_env` first (``jax.distributed``) and
feeds its own share of the global batch; :func:`shard_batch` assembles the global array from the
process-local rows. On CPU the same path runs with ``--xla_force_host_platform_device_count=N``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_from_env() -> bool:
    """Join a multi-host learner, as the process's launcher set it up; returns whether it did.

    - ``LWD_JAX_DISTRIBUTED=auto`` (the Kubernetes template in infra/ sets it on learner pods):
      ``jax.distributed.initialize()`` finds its peers itself (an Indexed Job behind a headless
      service, SLURM, Open MPI, Cloud TPU).
    - ``LWD_JAX_COORDINATOR=host:port``, ``LWD_JAX_NUM_PROCESSES``, ``LWD_JAX_PROCESS_ID``: explicit,
      for launchers JAX does not detect.
    - neither: one host (no-op).
    """
    address = os.environ.get("LWD_JAX_COORDINATOR")
    if address:
        jax.distributed.initialize(coordinator_address=address, num_processes=int(os.environ["LWD_JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["LWD_JAX_PROCESS_ID"]))
        return True
    if os.environ.get("LWD_JAX_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
        return True
    return False


def data_mesh(devices: list | None = None) -> Mesh:
    devices = devices if devices is not None else jax.devices()
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def local_batch_size(global_batch: int, mesh: Mesh) -> int:
    devices = mesh.devices.size
    if global_batch % devices:
        raise ValueError(f"batch size {global_batch} is not divisible by the {devices} devices of the mesh")
    return global_batch // jax.process_count()


def shard_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays split along the batch axis, built from this process's rows."""
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value)) for key, value in local.items()}
