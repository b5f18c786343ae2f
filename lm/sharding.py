"""The device mesh, logical-axis rules and the shardings of state and batches.

The mesh has axes (data, fsdp, expert, tensor) with sizes from `config.mesh`. Parameters
carry logical axis names (see `lm.model`); `config.mesh.rules` maps those names to mesh
axes. Batches are split over (data, fsdp, expert): the expert axis shards MoE experts and
is one more data-parallel axis everywhere else.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "expert", "tensor")
BATCH_AXES = ("batch", "activation_seq")  # logical axes of every [batch, seq] input array


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int, int]:
  """(data, fsdp, expert, tensor) sizes, resolving data = -1 to the devices left over.

  Raises:
    ValueError: the sizes do not multiply to `num_devices` (names the config keys).
  """
  fsdp, expert, tensor = mesh_config.fsdp, mesh_config.expert, mesh_config.tensor
  others = fsdp * expert * tensor
  data = mesh_config.data
  if data == -1:
    if num_devices % others:
      raise ValueError(f"mesh.fsdp * mesh.expert * mesh.tensor = {others} does not divide the {num_devices} devices")
    data = num_devices // others
  if data * others != num_devices:
    raise ValueError(f"mesh.data * mesh.fsdp * mesh.expert * mesh.tensor = {data}*{fsdp}*{expert}*{tensor} = "
                     f"{data * others} but there are {num_devices} devices")
  return data, fsdp, expert, tensor


def make_mesh(mesh_config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def rules(mesh_config: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in mesh_config.rules)


def logical_shardings(logical_specs: Any, mesh: Mesh, axis_rules) -> Any:
  """NamedShardings of a tree of logical PartitionSpecs (as from `nn.get_partition_spec`)."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, axis_rules)


def batch_sharding(mesh: Mesh, axis_rules) -> NamedSharding:
  """Sharding of a [batch, seq] input array."""
  return logical_shardings(PartitionSpec(*BATCH_AXES), mesh, axis_rules)


def data_parallel_size(mesh: Mesh) -> int:
  """Devices that each take a distinct slice of the batch."""
  return mesh.shape["data"] * mesh.shape["fsdp"] * mesh.shape["expert"]


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles each process's rows ([batch / process_count, seq]) into global sharded arrays."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def from_full_host_array(array: np.ndarray, target: NamedSharding) -> jax.Array:
  """A global array from a host array that every process holds in full (validation rows, prompts)."""
  return jax.make_array_from_callback(array.shape, target, lambda index: array[index])


def describe(params: Any, shardings: Any) -> list[str]:
  """One line per parameter: path, shape, PartitionSpec and bytes per device."""
  lines = []
  flat_params = jax.tree_util.tree_leaves_with_path(params)
  flat_shardings = jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, leaf), sharding in zip(flat_params, flat_shardings):
    local_shape = sharding.shard_shape(leaf.shape)
    nbytes = math.prod(local_shape) * leaf.dtype.itemsize
    lines.append(f"{jax.tree_util.keystr(path):60s} {str(leaf.shape):20s} {str(sharding.spec):40s} {nbytes:>12,d}")
  return lines
