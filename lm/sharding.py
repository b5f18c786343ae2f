"""The device mesh, logical-axis rules, the shardings of state and batches, and multi-host start-up.

The mesh has axes (data, fsdp, expert, tensor). Each axis has a within-slice size
(`config.mesh.data`, ...: devices joined by the fast interconnect, ICI or NVLink) and an
across-slice size (`config.mesh.dcn_data`, ...: slices or nodes joined by the data-centre
network); the axis spans their product, with the across-slice part outermost, so only the
collectives of that axis cross the slow network.

Parameters carry logical axis names (see `lm.model`); `config.mesh.rules` maps those names
to mesh axes. Batches are split over (data, fsdp, expert): the expert axis shards MoE
experts and is one more data-parallel axis everywhere else.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "expert", "tensor")
DCN_FIELDS = tuple(f"dcn_{axis}" for axis in MESH_AXES)
BATCH_AXES = ("batch", "activation_seq")  # logical axes of every [batch, seq] input array


class ShardingError(ValueError):
  """A mesh or rule that cannot lay out the model; the message names the parameter, shape and rule."""


def mesh_shapes(mesh_config: ml_collections.ConfigDict,
                num_devices: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
  """(within-slice sizes, across-slice sizes) of (data, fsdp, expert, tensor); data = -1 takes the devices left.

  Raises:
    ValueError: the sizes do not multiply to `num_devices` (names the config keys).
  """
  dcn = tuple(mesh_config[field] for field in DCN_FIELDS)
  num_slices = math.prod(dcn)
  if num_devices % num_slices:
    raise ValueError(f"mesh.dcn_data * mesh.dcn_fsdp * mesh.dcn_expert * mesh.dcn_tensor = {num_slices} slices "
                     f"does not divide the {num_devices} devices")
  per_slice = num_devices // num_slices
  fsdp, expert, tensor = mesh_config.fsdp, mesh_config.expert, mesh_config.tensor
  others = fsdp * expert * tensor
  data = mesh_config.data
  if data == -1:
    if per_slice % others:
      raise ValueError(f"mesh.fsdp * mesh.expert * mesh.tensor = {others} does not divide the {per_slice} devices "
                       f"of a slice ({num_devices} devices in {num_slices} slice(s))")
    data = per_slice // others
  if data * others != per_slice:
    slices = f" per slice ({num_devices} devices in {num_slices} slices)" if num_slices > 1 else ""
    raise ValueError(f"mesh.data * mesh.fsdp * mesh.expert * mesh.tensor = {data}*{fsdp}*{expert}*{tensor} = "
                     f"{data * others} but there are {per_slice} devices{slices}")
  return (data, fsdp, expert, tensor), dcn


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int, int]:
  """Total (data, fsdp, expert, tensor) sizes: within-slice times across-slice."""
  ici, dcn = mesh_shapes(mesh_config, num_devices)
  return tuple(i * d for i, d in zip(ici, dcn))


def _slice_of(devices: Sequence[jax.Device], num_slices: int) -> list[int]:
  """The slice (DCN granule) of each device.

  TPU devices know their slice; otherwise processes are grouped into `num_slices` equal
  groups (GPU nodes), and a single process (simulated devices) splits its devices evenly.
  """
  if all(hasattr(d, "slice_index") for d in devices) and len({d.slice_index for d in devices}) == num_slices:
    return [d.slice_index for d in devices]
  processes = sorted({d.process_index for d in devices})
  if len(processes) % num_slices == 0 and len(processes) >= num_slices:
    rank = {p: i for i, p in enumerate(processes)}
    return [rank[d.process_index] * num_slices // len(processes) for d in devices]
  order = sorted(range(len(devices)), key=lambda i: devices[i].id)
  slices = [0] * len(devices)
  for position, i in enumerate(order):
    slices[i] = position * num_slices // len(devices)
  return slices


def device_grid(mesh_config: ml_collections.ConfigDict, devices: Sequence[jax.Device]) -> np.ndarray:
  """Devices arranged as the [data, fsdp, expert, tensor] mesh: topology-aware within a slice, slices outermost."""
  ici, dcn = mesh_shapes(mesh_config, len(devices))
  num_slices = math.prod(dcn)
  if num_slices == 1:
    return mesh_utils.create_device_mesh(ici, list(devices), allow_split_physical_axes=True)
  slice_index = _slice_of(devices, num_slices)
  groups = [[d for d, s in zip(devices, slice_index) if s == k] for k in range(num_slices)]
  if any(len(group) != len(devices) // num_slices for group in groups):
    sizes = [len(group) for group in groups]
    raise ValueError(f"the devices fall into slices of unequal sizes {sizes}; the mesh.dcn_* sizes need equal slices")
  # [*dcn, *ici] -> interleave (dcn_0, ici_0, dcn_1, ici_1, ...) -> [dcn_0 * ici_0, ...]: slices outermost per axis.
  grids = np.stack([mesh_utils.create_device_mesh(ici, group, allow_split_physical_axes=True) for group in groups])
  grids = grids.reshape(dcn + ici)
  order = [axis for pair in zip(range(4), range(4, 8)) for axis in pair]
  return grids.transpose(order).reshape(tuple(i * d for i, d in zip(ici, dcn)))


def make_mesh(mesh_config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(device_grid(mesh_config, devices), MESH_AXES)


def rules(mesh_config: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in mesh_config.rules)


def check_rules(axis_rules) -> None:
  """Raises ShardingError for a rule that names a mesh axis the mesh does not have."""
  for rule in axis_rules:
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ShardingError(f"mesh.rules entry {rule!r} is not (logical_name, mesh_axes)")
    name, axes = rule
    for axis in (() if axes is None else (axes,) if isinstance(axes, str) else axes):
      if axis not in MESH_AXES:
        raise ShardingError(f"mesh.rules entry {rule!r}: mesh axis {axis!r} is not one of {', '.join(MESH_AXES)}")


def mesh_parts(mesh_axes: Any, mesh_sizes: dict[str, int]) -> int:
  """Devices one dimension is split over: the product of the sizes of its mesh axes (None, a name or a tuple)."""
  if mesh_axes is None:
    return 1
  if isinstance(mesh_axes, str):
    return mesh_sizes[mesh_axes]
  return math.prod(mesh_sizes[axis] for axis in mesh_axes)


def _mesh_axes(logical_axes: Sequence[str | None], ndim: int, axis_rules) -> tuple:
  logical_axes = tuple(logical_axes) + (None,) * (ndim - len(logical_axes))
  return tuple(nn.logical_to_mesh_axes(logical_axes, axis_rules))


def shard_shape(shape: Sequence[int], logical_axes: Sequence[str | None], axis_rules,
                mesh_sizes: dict[str, int]) -> tuple[int, ...]:
  """Shape of one device's shard of an array of `shape` with `logical_axes` (GSPMD pads uneven splits)."""
  mesh_axes = _mesh_axes(logical_axes, len(shape), axis_rules)
  return tuple(-(-dim // mesh_parts(axes, mesh_sizes)) for dim, axes in zip(shape, mesh_axes))


def shard_elements(shape: Sequence[int], logical_axes: Sequence[str | None], axis_rules,
                   mesh_sizes: dict[str, int]) -> int:
  """Elements of one device's shard of an array of `shape` with `logical_axes`."""
  return math.prod(shard_shape(shape, logical_axes, axis_rules, mesh_sizes))


def _boxed_leaves(boxed: Any) -> list[tuple[str, Any, tuple]]:
  """(path, ShapeDtypeStruct, logical axes) of every leaf of a tree whose leaves may be nn.Partitioned boxes."""
  specs = jax.tree_util.tree_leaves(nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, PartitionSpec))
  leaves = jax.tree_util.tree_leaves_with_path(nn.meta.unbox(boxed))
  return [("/".join(_key_name(k) for k in path), leaf, tuple(spec)) for (path, leaf), spec in zip(leaves, specs,
                                                                                                      strict=True)]


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def check_divisible(boxed: Any, axis_rules, mesh_sizes: dict[str, int]) -> None:
  """Raises ShardingError naming the parameter, its shape and the rule when a mesh axis does not divide a dimension.

  boxed: a tree of (nn.Partitioned-boxed) ShapeDtypeStructs, e.g. `jax.eval_shape` of the model's init.
  """
  check_rules(axis_rules)
  rule_of = dict(axis_rules)
  for path, leaf, logical in _boxed_leaves(boxed):
    for dim, (size, name, axes) in enumerate(zip(leaf.shape, logical + (None,) * leaf.ndim,
                                                 _mesh_axes(logical, leaf.ndim, axis_rules))):
      parts = mesh_parts(axes, mesh_sizes)
      if size % parts:
        sizes = " x ".join(f"{a}={mesh_sizes[a]}" for a in ((axes,) if isinstance(axes, str) else axes))
        raise ShardingError(
            f"parameter {path} of shape {tuple(leaf.shape)}: dimension {dim} ({name!r}, size {size}) is not "
            f"divisible by mesh {sizes} = {parts} under the rule ({name!r}, {rule_of.get(name)!r}) of mesh.rules; "
            "change the mesh sizes, the model width or the rule")


def describe(boxed: Any, axis_rules, mesh_sizes: dict[str, int]) -> tuple[list[str], int, int]:
  """(one line per leaf: path, shape, dtype, mesh PartitionSpec, bytes per device; total bytes; bytes per device).

  boxed: a tree of (nn.Partitioned-boxed) ShapeDtypeStructs or arrays; no devices are needed.
  """
  lines, total, per_device = [], 0, 0
  for path, leaf, logical in _boxed_leaves(boxed):
    itemsize = np.dtype(leaf.dtype).itemsize
    spec = PartitionSpec(*_mesh_axes(logical, leaf.ndim, axis_rules))
    local = math.prod(shard_shape(leaf.shape, logical, axis_rules, mesh_sizes)) * itemsize
    total += math.prod(leaf.shape) * itemsize
    per_device += local
    lines.append(f"{path:56s} {str(tuple(leaf.shape)):22s} {str(np.dtype(leaf.dtype)):9s} {str(spec):44s} "
                 f"{local:>14,d}")
  return lines, total, per_device


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


# Environment variables by which a launcher announces a multi-process job that jax.distributed detects itself.
_CLUSTER_SIGNS = {
    "SLURM": lambda env: "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1,
    "Open MPI": lambda env: int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1,
    "TPU pod": lambda env: "," in env.get("TPU_WORKER_HOSTNAMES", ""),
}


def initialize_distributed(mode: str, coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1, env: dict[str, str] | None = None) -> str:
  """Starts jax.distributed for a multi-process run; returns how (for the log), or '' for a single process.

  mode: 'off' (single process), 'on' (always initialise; JAX detects TPU pods, SLURM and
    Open MPI, or takes the explicit arguments), 'auto' (initialise when the arguments are
    given or the environment shows a multi-process job).
  coordinator_address, num_processes, process_id: explicit alternative to detection; all three together.

  Must run before anything touches a JAX backend. CPU devices talk through gloo collectives.
  """
  env = os.environ if env is None else env
  explicit = {"--coordinator_address": coordinator_address, "--num_processes": num_processes > 0,
              "--process_id": process_id >= 0}
  if any(explicit.values()) and not all(explicit.values()):
    missing = ", ".join(name for name, given in explicit.items() if not given)
    raise ValueError(f"explicit multi-process start needs --coordinator_address, --num_processes and --process_id "
                     f"together; missing {missing}")
  if mode == "off":
    if any(explicit.values()):
      raise ValueError("--distributed=off contradicts --coordinator_address / --num_processes / --process_id")
    return ""
  detected = [name for name, sign in _CLUSTER_SIGNS.items() if sign(env)]
  if mode == "auto" and not any(explicit.values()) and not detected:
    return ""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if all(explicit.values()):
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    how = f"coordinator {coordinator_address}"
  else:
    jax.distributed.initialize()
    how = f"detected {detected[0]}" if detected else "detected by JAX"
  return f"process {jax.process_index()} of {jax.process_count()} ({how})"
