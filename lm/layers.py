"""Pieces shared by every module of the model: dtypes, initialisers, norms and dense kernels.

Each parameter is created with its logical axis names (see `lm.sharding`), and its
initialiser follows `model.init_scheme`.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections


def compute_dtype_name(compute_dtype: str, backend: str | None = None) -> str:
  """`model.compute_dtype` with 'auto' decided: float32 on CPU, bfloat16 on accelerators.

  backend: 'cpu' | 'gpu' | 'tpu' the model runs on; None = this process's default backend.
  """
  if compute_dtype != "auto":
    return compute_dtype
  backend = jax.default_backend() if backend is None else backend
  return "float32" if backend == "cpu" else "bfloat16"


def dtypes(cfg: ml_collections.FrozenConfigDict) -> tuple[jnp.dtype, jnp.dtype]:
  """(compute dtype, parameter dtype) of `config.model`."""
  return jnp.dtype(compute_dtype_name(cfg.compute_dtype)), jnp.dtype(cfg.param_dtype)


def kernel_init(cfg: ml_collections.FrozenConfigDict, fan_in: int, residual_output: bool = False):
  """Initialiser of a matmul kernel with `fan_in` inputs under `model.init_scheme`.

  residual_output marks projections that write into the residual stream (attention out,
  MLP down), which the scaled_output scheme shrinks by 1/sqrt(2 * num_layers) so the
  residual variance does not grow with depth.
  """
  if cfg.init_scheme == "fan_in":
    return nn.initializers.normal(fan_in ** -0.5)
  if cfg.init_scheme == "scaled_output" and residual_output:
    return nn.initializers.normal(cfg.init_std / (2 * cfg.num_layers) ** 0.5)
  return nn.initializers.normal(cfg.init_std)


def embedding_init(cfg: ml_collections.FrozenConfigDict):
  """Token and position tables: N(0, init_std) under every scheme (they are looked up, not multiplied)."""
  return nn.initializers.normal(cfg.init_std)


def param(module: nn.Module, cfg, name: str, shape: Sequence[int], axes: Sequence[str | None], init) -> jnp.ndarray:
  """A parameter of `module` with logical `axes`, in param dtype, returned cast to the compute dtype."""
  dtype, param_dtype = dtypes(cfg)
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), param_dtype).astype(dtype)


def bias(module: nn.Module, cfg, name: str, shape: Sequence[int], axes: Sequence[str | None]) -> jnp.ndarray | float:
  """A zero-initialised bias when `model.use_bias`, else 0.0 (adds nothing)."""
  if not cfg.use_bias:
    return 0.0
  return param(module, cfg, name, shape, axes, nn.initializers.zeros)


def matmul(x: jnp.ndarray, kernel: jnp.ndarray, in_dims: int = 1, kernel_transposed: bool = False,
           preferred_element_type=None, bias: jnp.ndarray | float = 0.0) -> jnp.ndarray:
  """x: [..., *in_shape] times kernel: [*in_shape, *out_shape] (+ bias: [*out_shape]) -> [..., *out_shape].

  in_dims: how many leading axes of `kernel` are contracted with the trailing axes of `x`.
  kernel_transposed: `kernel` is [*out_shape, *in_shape] instead (a tied embedding table
    [vocab, d_model] used as the output projection).
  bias: [*out_shape], or a Python float (0.0 for none, as `bias` returns without `model.use_bias`).

  The token axes are flattened into one: [batch * seq, in] x [in, out]. As an einsum over
  [batch, seq, ...] the weight gradient contracts two axes (batch and seq), which XLA on CPU
  compiles into transposing copies of the activations; the 2-D form runs an MLP block's
  forward and backward in 291 ms instead of 325 ms at [16, 256, 512 -> 2048] (README,
  "Performance"). The reshapes are free (row-major bitcasts), and a batch axis sharded over
  the mesh stays sharded on the merged axis.

  The bias is added to the 2-D product [batch * seq, out] too, so that its gradient (a sum
  over tokens) reads the same [batch * seq, out] array as the weight gradient. Added after the
  reshape to [batch, seq, heads, head_dim], XLA on CPU gave each query/key/value bias gradient
  its own transposing copy of the incoming gradient.
  """
  if kernel_transposed:
    in_shape, out_shape = kernel.shape[kernel.ndim - in_dims:], kernel.shape[:kernel.ndim - in_dims]
  else:
    in_shape, out_shape = kernel.shape[:in_dims], kernel.shape[in_dims:]
  if tuple(x.shape[x.ndim - in_dims:]) != tuple(in_shape):
    raise ValueError(f"matmul: x {x.shape} does not end in the kernel's input axes {in_shape}")
  lead = x.shape[:x.ndim - in_dims]
  rows = x.reshape(math.prod(lead), math.prod(in_shape))
  kernel = kernel.reshape(-1, math.prod(in_shape)) if kernel_transposed else kernel.reshape(math.prod(in_shape), -1)
  out = jnp.einsum("ti,oi->to" if kernel_transposed else "ti,io->to", rows, kernel,
                   preferred_element_type=preferred_element_type)
  if not isinstance(bias, float):
    if tuple(bias.shape) != tuple(out_shape):
      raise ValueError(f"matmul: bias {bias.shape} is not the kernel's output shape {out_shape}")
    out = out + bias.reshape(-1).astype(out.dtype)
  elif bias != 0.0:
    raise ValueError(f"matmul: bias must be an array of the output shape or 0.0, got {bias}")
  return out.reshape(*lead, *out_shape)


def norm(cfg: ml_collections.FrozenConfigDict, name: str, axis_name: str = "embed") -> nn.Module:
  """RMSNorm or LayerNorm (`model.norm_type`) over the last axis, statistics in float32.

  LayerNorm has a bias exactly when `model.use_bias`; its scale and bias carry `axis_name`.
  """
  dtype, param_dtype = dtypes(cfg)
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, (axis_name,))
  if cfg.norm_type == "rmsnorm":
    return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype, scale_init=scale_init, name=name)
  return nn.LayerNorm(epsilon=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype, use_bias=cfg.use_bias,
                      scale_init=scale_init,
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis_name,)), name=name)
