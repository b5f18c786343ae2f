"""Parameter, FLOP and memory accounting of a config, from shapes alone: nothing is allocated.

    python -m lm.params --config configs/llama2_7b.py [--mesh data=1,fsdp=8,expert=1,tensor=1,dcn_data=1]
        [--num_devices N] [--shardings] [--device_memory_gb 80] [--platform gpu] [--config.GROUP.FIELD=VALUE ...]

Parameters are the leaves of `jax.eval_shape(model.init)`, so they are exactly what the model
creates. Embedding parameters are the token table, the learned position table and the untied
output matrix. For MoE the active count keeps experts_per_token / num_experts of the expert
weights (the router and everything outside the experts always run).

Training FLOPs per token are 6N + attention:
  N: the weights every token is multiplied by: the attention projections, the MLP (or the
    experts_per_token active experts and the router), and the output projection, tied or not.
    Norm scales, biases and the token/position lookups (gathers) are not in N: they cost a
    few FLOPs per token, not 2 per parameter.
  attention: QK^T and AV take 2 * keys * heads * head_dim FLOPs each per token and layer in
    the forward pass, times 3 with the backward pass: 12 * keys * heads * head_dim. `keys` is
    the average number of keys a query may see in a row of seq_len tokens holding one
    document: (seq_len + 1) / 2 for a global causal layer (the causal half), about
    min(window, seq_len) for a local one, seq_len without the causal mask (masked objective).
  The one-hot dispatch and combine einsums of the MoE layers grow with seq_len * capacity;
  they are reported beside the total, not in it: they move tokens, they do not compute.

Memory per device for a mesh (whose devices need not exist):
  parameters, gradients (both param_dtype) and the optimizer state (`jax.eval_shape` of the
  `lm.optim` init: AdamW's two moments in param_dtype and its step counts). Each array is
  split as the logical-axis rules of `config.mesh` map it onto the mesh: every dimension is
  divided, rounded up, by the product of the sizes of the mesh axes its logical name maps to.

  activations, for the per-device batch, from an inventory of the buffers the backward pass
  keeps (the residuals JAX autodiff saves for this model), each sharded by its logical axes:
    remat none, per layer: the float32 internals of the two norms (x - mean, x^2 and the
      broadcast rsqrt * scale: three copies of width d_model each) and their outputs; q, k,
      v and the attention output; the attention probabilities for the xla implementation
      ([heads, seq, seq] per row: the float32 softmax, and the copy AV reads if 16-bit,
      two more float32 copies under a logit soft-cap) or only the float32 log-sum-exp for
      blockwise and flash attention; the MLP's hidden activations (6 of width ffn_dim for
      SwiGLU and GELU: gate, up, the activation's intermediates and the product; ReLU keeps
      its output and a mask); for MoE the router's float32 logits, the routing one-hots,
      dispatch and combine [seq, experts, capacity] and the expert-major activations; and a
      compute-dtype copy of every layer's weights when that differs from param_dtype.
    remat full: the input of each scanned group only.
    remat save_matmuls: the group input and the projection outputs (q, k, v, attention out,
      MLP gate and up, router logits); the attention matrix, norms and experts are recomputed.
  The peak is at the start of the backward pass: all of the above for every layer, the final
  norm, the batch, a compute-dtype copy of the output matrix, plus the larger of
    the loss phase: three float32 [batch, seq, vocab] buffers (the logits, the softmax the
      cross-entropy keeps, the logits' gradient), and
    the layer phase: one scanned group's full per-layer inventory (recomputed under remat;
      without remat it stands for the gradient buffers of backpropagating through one group)
      plus the group's weights gathered over the fsdp axis in the compute dtype.

  Check against XLA (tests/test_params.py): the real train step is compiled,
  `trainer.train_step.__wrapped__.lower(trainer.abstract_state, batch_spec).compile()` inside
  `jax.set_mesh(trainer.mesh)` and `nn.logical_axis_rules(trainer.rules)`, with batch_spec the
  [global_batch, seq_len] int32 ShapeDtypeStructs of the batch sharding, and its
  `memory_analysis()` gives the peak per device as argument + output + temp - alias bytes (the
  donated state's outputs alias its inputs). For a float32 Llama-shaped model (d_model 256,
  4 layers, seq 256, batch 8, vocab 4096) the estimate over the measured peak is 0.99 (remat
  none), 1.03 (full) and 1.12 (save_matmuls) on one CPU device, and 0.96, 1.00 and 1.03 on
  a data 2 x fsdp 2 x tensor 2 mesh. bfloat16
  compute cannot be checked on CPU (XLA's CPU backend widens bfloat16 arithmetic to float32),
  and accelerator backends fuse and schedule differently: the activation figure estimates
  what the program keeps, it is not a guarantee.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags

from lm import attention
from lm import config as config_lib
from lm import mlp
from lm import model as model_lib
from lm import moe
from lm import optim
from lm import sharding

# Buffers of width ffn_dim the backward pass keeps per MLP, by activation (see the module docstring).
MLP_HIDDEN_BUFFERS = {"swiglu": 6, "gelu": 6, "relu": 1, "relu2": 2}
BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")
_RESIDUAL = ("batch", "activation_seq", "activation_embed")
_HEADS = ("batch", "activation_seq", "activation_heads", None)
_KV_HEADS = ("batch", "activation_seq", "activation_kv_heads", None)
_HIDDEN = ("batch", "activation_seq", "activation_mlp")
_SCORES = ("batch", "activation_heads", "activation_seq", None)
_ROWS = ("batch", "activation_seq", None)


def tree_bytes_per_device(boxed: Any, rules, mesh_sizes: dict[str, int], dtype: Any = None) -> int:
  """Bytes of one device's shards of every leaf of a tree of (boxed) ShapeDtypeStructs.

  Leaves boxed with logical names (nn.Partitioned) are split by `rules`; plain leaves are replicated.
  dtype: count every leaf at this dtype instead of its own.
  """
  if dtype is not None:
    boxed = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), boxed)
  return sharding.describe(boxed, rules, mesh_sizes)[2]


def abstract_state(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{"params", "opt_state"} of the train state `lm.train` builds, as boxed ShapeDtypeStructs."""
  model = model_lib.from_config(config.model)
  optimizer = optim.make_optimizer(config.optim, config.train.steps)
  dummy = model_lib.init_inputs(config.data.seq_len)

  def init(rng):
    params = model.init(rng, dummy, dummy, dummy)["params"]
    return {"params": params, "opt_state": optimizer.init(params)}

  with nn.logical_axis_rules(sharding.rules(config.mesh)):
    return jax.eval_shape(init, jax.random.PRNGKey(0))


def count_parameters(model_config: ml_collections.ConfigDict) -> dict[str, int]:
  """Parameter counts of the model `model_config` describes.

  Returns:
    total; token_embedding, position_embedding (learned table) and output (untied output
    matrix), summed in embedding; non_embedding = total - embedding; experts (all expert
    weights and biases); active and active_non_embedding (experts_per_token / num_experts of
    the expert weights; equal to total and non_embedding for dense models); approx_12ld2 =
    12 * num_layers * d_model^2, the textbook non-embedding count (MHA, 4 * d_model MLP).
  """
  m = model_config
  params = nn.meta.unbox(model_lib.abstract_params(m))
  counts = dict(total=0, token_embedding=0, position_embedding=0, output=0, experts=0)
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [entry.key for entry in path if isinstance(entry, jax.tree_util.DictKey)]
    size = math.prod(leaf.shape)
    counts["total"] += size
    if names[0] == "embed":
      counts["token_embedding"] += size
    elif names[0] == "position_embed":
      counts["position_embedding"] += size
    elif names[0] == "unembed":
      counts["output"] += size
    elif "moe" in names and names[-1] != "router":
      counts["experts"] += size
  counts["embedding"] = counts["token_embedding"] + counts["position_embedding"] + counts["output"]
  counts["non_embedding"] = counts["total"] - counts["embedding"]
  active_experts = counts["experts"] * m.experts_per_token // m.num_experts if m.num_experts else 0
  counts["active"] = counts["total"] - counts["experts"] + active_experts
  counts["active_non_embedding"] = counts["active"] - counts["embedding"]
  counts["approx_12ld2"] = 12 * m.num_layers * m.d_model ** 2
  return counts


def visible_keys(seq_len: int, window: int, causal: bool) -> float:
  """Average number of keys a query sees in a one-document row of `seq_len` tokens (window 0 = global).

  Exactly the mean over queries of the keys `attention.attention_mask` allows: causal and window w
  gives min(t + 1, w) keys to query t; bidirectional gives the positions within w - 1 on either side.
  """
  w = seq_len if window <= 0 else min(window, seq_len)
  if causal:
    pairs = w * (w + 1) // 2 + (seq_len - w) * w
  else:
    # Each side adds min(distance to the row's end, w - 1) keys to the query itself.
    one_side = (w - 1) * w // 2 + (seq_len - w) * (w - 1)
    pairs = seq_len + 2 * one_side
  return pairs / seq_len


def flops_per_token(model_config: ml_collections.ConfigDict, seq_len: int) -> dict[str, float]:
  """Training (forward + backward) FLOPs per token of a row of `seq_len` tokens.

  Returns:
    matmul_weights: N, the weights a token is multiplied by (active experts and router
      for MoE layers; the output projection included); output_projection: d_model * vocab,
      part of N; six_n: 6N; attention: 12 * keys * heads * head_dim summed over layers;
    total: six_n + attention (what MFU counts); moe_dispatch: the dispatch and combine
      einsums of MoE layers, 12 * experts * capacity * d_model per layer, not in total.
  """
  m = model_config
  d = m.d_model
  attention_weights = 2 * d * m.head_dim * (m.num_heads + m.num_kv_heads)  # query, key, value, output
  mlp_weights = (3 if mlp.is_gated(m.mlp_activation) else 2) * d * m.ffn_dim
  causal = m.objective == "causal"
  layer_weights = attention_total = dispatch = 0.0
  for layer in range(m.num_layers):
    layer_weights += attention_weights
    if model_lib.layer_is_moe(m, layer):
      layer_weights += m.experts_per_token * mlp_weights + d * m.num_experts
      dispatch += 12 * m.num_experts * moe.capacity(m, seq_len) * d
    else:
      layer_weights += mlp_weights
    keys = visible_keys(seq_len, model_lib.layer_window(m, layer), causal)
    attention_total += 12 * keys * m.num_heads * m.head_dim
  output = d * m.vocab_size
  weights = layer_weights + output
  return dict(matmul_weights=weights, output_projection=float(output), six_n=6 * weights, attention=attention_total,
              total=6 * weights + attention_total, moe_dispatch=dispatch)


def training_compute(config: ml_collections.ConfigDict) -> dict[str, float]:
  """The size, data and compute of the training run `config` describes, by both usual counts.

  Returns:
    params_total, params_non_embedding: N as `count_parameters` gives it (the active counts for
      MoE: the parameters a token uses); tokens: D = train.steps * global_batch_size * seq_len;
    compute_6nd: C = 6 * params_total * D (Hoffmann et al.); compute_6nd_non_embedding:
      6 * params_non_embedding * D (Kaplan et al.); flops_per_token: 6N + attention as
      `flops_per_token` counts it (what MFU uses); compute: flops_per_token * D, the full count.
  """
  counts = count_parameters(config.model)
  tokens = float(config.train.steps * config.train.global_batch_size * config.data.seq_len)
  per_token = flops_per_token(config.model, config.data.seq_len)["total"]
  n, n_non_embedding = float(counts["active"]), float(counts["active_non_embedding"])
  return dict(params_total=n, params_non_embedding=n_non_embedding, tokens=tokens, compute_6nd=6 * n * tokens,
              compute_6nd_non_embedding=6 * n_non_embedding * tokens, flops_per_token=per_token,
              compute=per_token * tokens)


@dataclasses.dataclass(frozen=True)
class Buffer:
  """`count` arrays of `shape` (global batch) with logical `axes` and `itemsize` bytes per element."""

  name: str
  shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  itemsize: int
  count: int = 1

  def bytes_per_device(self, rules, mesh_sizes: dict[str, int]) -> int:
    return self.count * sharding.shard_elements(self.shape, self.axes, rules, mesh_sizes) * self.itemsize


def _mlp_hidden_buffers(cfg, shape, axes, compute: int) -> list[Buffer]:
  buffers = [Buffer("mlp hidden", shape, axes, compute, MLP_HIDDEN_BUFFERS[cfg.mlp_activation])]
  if cfg.mlp_activation in ("relu", "relu2"):
    buffers.append(Buffer("relu mask", shape, axes, 1))
  return buffers


def layer_buffers(cfg: ml_collections.ConfigDict, layer: int, batch: int, seq: int, impl: str,
                  backend: str) -> list[Buffer]:
  """What backpropagation through `layer` keeps without remat, for a [batch, seq] step (module docstring)."""
  b, s, d, h, kv, hd, f = batch, seq, cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.ffn_dim
  c = jnp.dtype(cfg.compute_dtype).itemsize
  buffers = [
      Buffer("norm internals (float32)", (b, s, d), _RESIDUAL, 4, 6),
      Buffer("norm outputs", (b, s, d), _RESIDUAL, c, 2),
      Buffer("query, attention output", (b, s, h, hd), _HEADS, c, 2),
      Buffer("key, value", (b, s, kv, hd), _KV_HEADS, c, 2),
  ]
  if cfg.qk_norm:
    buffers += [Buffer("query norm internals (float32)", (b, s, h, hd), _HEADS, 4, 3),
                Buffer("key norm internals (float32)", (b, s, kv, hd), _KV_HEADS, 4, 3)]
  flash = impl == "blockwise" or impl == "dot_product_attention" and backend == "gpu"
  if flash:
    buffers.append(Buffer("attention log-sum-exp (float32)", (b, h, s), _SCORES[:3], 4))
  else:
    buffers.append(Buffer("attention probabilities (float32)", (b, h, s, s), _SCORES, 4))
    if c != 4:  # AV reads a compute-dtype copy of the probabilities
      buffers.append(Buffer("attention weights", (b, h, s, s), _SCORES, c))
    if cfg.attention_logit_softcap > 0:
      buffers.append(Buffer("soft-cap internals (float32)", (b, h, s, s), _SCORES, 4, 2))
  if not model_lib.layer_is_moe(cfg, layer):
    return buffers + _mlp_hidden_buffers(cfg, (b, s, f), _HIDDEN, c)
  e, k, cap = cfg.num_experts, cfg.experts_per_token, moe.capacity(cfg, seq)
  if c != 4:
    buffers.append(Buffer("router input (float32)", (b, s, d), _RESIDUAL, 4))
  buffers += [
      Buffer("router logits, probabilities (float32)", (b, s, e), _ROWS, 4, 2),
      Buffer("top-k choices and weights", (b, s, k), _ROWS, 4, 3),
      Buffer("expert assignments (float32)", (b, s, k, e), moe.ROUTING_AXES, 4),
      Buffer("capacity slots (float32)", (b, s, k, cap), moe.ROUTING_AXES, 4),
      Buffer("dispatch, combine", (b, s, e, cap), moe.ROUTING_AXES, c, 2),
      Buffer("expert inputs, outputs", (e, b, cap, d), moe.EXPERT_INPUT_AXES, c, 2),
  ]
  return buffers + _mlp_hidden_buffers(cfg, (e, b, cap, f), moe.EXPERT_HIDDEN_AXES, c)


def saved_matmul_buffers(cfg: ml_collections.ConfigDict, layer: int, batch: int, seq: int) -> list[Buffer]:
  """What `layer` keeps under remat save_matmuls: the outputs of projections without batch dimensions."""
  b, s, d, h, kv, hd = batch, seq, cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  c = jnp.dtype(cfg.compute_dtype).itemsize
  buffers = [Buffer("query", (b, s, h, hd), _HEADS, c), Buffer("key, value", (b, s, kv, hd), _KV_HEADS, c, 2),
             Buffer("attention out projection", (b, s, d), _RESIDUAL, c)]
  if model_lib.layer_is_moe(cfg, layer):  # expert matmuls carry the expert dimension as a batch dimension
    return buffers + [Buffer("router logits (float32)", (b, s, cfg.num_experts), _ROWS, 4)]
  count = 2 if mlp.is_gated(cfg.mlp_activation) else 1
  return buffers + [Buffer("mlp gate, up", (b, s, cfg.ffn_dim), _HIDDEN, c, count)]


def _sum_bytes(buffers: Sequence[Buffer], rules, mesh_sizes) -> int:
  return sum(buf.bytes_per_device(rules, mesh_sizes) for buf in buffers)


def activation_bytes(config: ml_collections.ConfigDict, mesh_sizes: dict[str, int], boxed_params: Any,
                     backend: str | None = None) -> dict[str, Any]:
  """Activation memory of one training step per device (see the module docstring for the model of the peak).

  Args:
    config: the run config (model, data.seq_len, train.global_batch_size, mesh.rules).
    mesh_sizes: size of every mesh axis.
    boxed_params: `abstract_state(config)["params"]`, for the weight copies.
    backend: platform the step runs on ('cpu' | 'gpu' | 'tpu'), which decides attention_impl 'auto'.

  Returns:
    kept_across_layers, final (final norm, batch, output matrix copy), loss_phase, layer_phase,
    total (= kept_across_layers + final + max(loss_phase, layer_phase)), all bytes per device;
    attention_impl, the implementation assumed.
  """
  config = config_lib.for_platform(config, backend or jax.default_backend())
  m, rules = config.model, sharding.rules(config.mesh)
  batch, seq = config.train.global_batch_size, config.data.seq_len
  backend = jax.default_backend() if backend is None else backend
  impl = attention.resolve_impl(m, seq, backend)
  compute, param = jnp.dtype(m.compute_dtype).itemsize, jnp.dtype(m.param_dtype).itemsize
  group = model_lib.group_size(m)
  num_groups = m.num_layers // group
  group_inventory = [buf for i in range(group) for buf in layer_buffers(m, i, batch, seq, impl, backend)]
  group_input = Buffer("group input", (batch, seq, m.d_model), _RESIDUAL, compute)

  blocks = boxed_params["blocks"]
  if m.remat_policy == "none":
    kept = num_groups * _sum_bytes(group_inventory, rules, mesh_sizes)
    if compute != param:  # the compute-dtype weight copies the matmuls read are kept for their backward pass
      kept += tree_bytes_per_device(blocks, rules, mesh_sizes, m.compute_dtype)
  elif m.remat_policy == "full":
    kept = num_groups * group_input.bytes_per_device(rules, mesh_sizes)
  else:
    saved = [group_input] + [buf for i in range(group) for buf in saved_matmul_buffers(m, i, batch, seq)]
    kept = num_groups * _sum_bytes(saved, rules, mesh_sizes)

  final = [Buffer("batch", (batch, seq), ("batch", "activation_seq"), 4, len(BATCH_KEYS))]
  if m.norm_position == "pre":
    final += [Buffer("final norm internals (float32)", (batch, seq, m.d_model), _RESIDUAL, 4, 3),
              Buffer("final norm output", (batch, seq, m.d_model), _RESIDUAL, compute)]
  if m.tie_embeddings or compute != param:  # the transposed table, or the cast output matrix
    final.append(Buffer("output matrix copy", (m.d_model, m.vocab_size), ("embed", "vocab"), compute))
  loss = Buffer("logits, softmax, logits gradient (float32)", (batch, seq, m.vocab_size),
                ("batch", "activation_seq", "activation_vocab"), 4, 3)
  gathered = 0
  if mesh_sizes.get("fsdp", 1) > 1:  # one group's weights, gathered over fsdp for its matmuls
    gathered = tree_bytes_per_device(blocks, rules, dict(mesh_sizes, fsdp=1), m.compute_dtype) // num_groups
  result = dict(
      kept_across_layers=kept,
      final=_sum_bytes(final, rules, mesh_sizes),
      loss_phase=loss.bytes_per_device(rules, mesh_sizes),
      layer_phase=_sum_bytes(group_inventory, rules, mesh_sizes) + gathered,
      attention_impl=impl,
  )
  result["total"] = result["kept_across_layers"] + result["final"] + max(result["loss_phase"], result["layer_phase"])
  return result


def memory_per_device(config: ml_collections.ConfigDict, mesh_sizes: dict[str, int],
                      backend: str | None = None) -> dict[str, Any]:
  """Training memory of one device on a mesh of `mesh_sizes` ({"data", "fsdp", "expert", "tensor"}).

  Returns:
    parameters, gradients, optimizer, activations, total: bytes per device;
    activation_detail: `activation_bytes`; per_device_batch: rows of the batch one device takes.
  """
  config = config_lib.for_platform(config, backend or jax.default_backend())
  sizes = {axis: int(mesh_sizes.get(axis, 1)) for axis in sharding.MESH_AXES}
  rules = sharding.rules(config.mesh)
  state = abstract_state(config)
  params = tree_bytes_per_device(state["params"], rules, sizes)
  optimizer = tree_bytes_per_device(state["opt_state"], rules, sizes)
  detail = activation_bytes(config, sizes, state["params"], backend)
  batch_parts = sharding.mesh_parts(nn.logical_to_mesh_axes(("batch",), rules)[0], sizes)
  result = dict(parameters=params, gradients=params, optimizer=optimizer, activations=detail["total"],
                activation_detail=detail, per_device_batch=config.train.global_batch_size / batch_parts)
  result["total"] = params + params + optimizer + detail["total"]
  return result


def parse_mesh(text: str) -> dict[str, int]:
  """'data=2,fsdp=4' -> {"data": 2, "fsdp": 4}; raises ValueError naming the bad entry."""
  sizes = {}
  for entry in filter(None, (part.strip() for part in text.split(","))):
    axis, sep, value = entry.partition("=")
    axis = axis.strip()
    if not sep:
      raise ValueError(f"--mesh entry {entry!r} is not AXIS=SIZE (e.g. --mesh data=2,fsdp=4)")
    if axis not in sharding.MESH_AXES + sharding.DCN_FIELDS:
      raise ValueError(f"--mesh axis {axis!r} is not one of {', '.join(sharding.MESH_AXES + sharding.DCN_FIELDS)}")
    try:
      size = int(value)
    except ValueError:
      raise ValueError(f"--mesh {axis}={value!r}: the size must be an integer") from None
    if size < 1 and not (axis == "data" and size == -1):
      allowed = " (or -1 for data)" if axis == "data" else ""
      raise ValueError(f"--mesh {axis}={size}: the size must be positive{allowed}")
    sizes[axis] = size
  return sizes


def resolve_mesh(mesh_config: ml_collections.ConfigDict, overrides: dict[str, int],
                 num_devices: int = 0) -> dict[str, int]:
  """Total mesh sizes (within-slice x across-slice) of config.mesh with `overrides` (axis or dcn_axis keys);
  data = -1 takes the devices left of `num_devices` (0: data = 1 per slice)."""
  mesh = copy.deepcopy(mesh_config)
  for key, size in overrides.items():
    mesh[key] = size
  if not num_devices:
    mesh.data = 1 if mesh.data == -1 else mesh.data
    num_devices = math.prod(mesh[key] for key in sharding.MESH_AXES + sharding.DCN_FIELDS)
  return dict(zip(sharding.MESH_AXES, sharding.mesh_shape(mesh, num_devices)))


def _count(n: float) -> str:
  for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
    if abs(n) >= scale:
      return f"{n / scale:.2f}{suffix}"
  return f"{n:.0f}"


def _bytes(n: float) -> str:
  for scale, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
    if abs(n) >= scale:
      return f"{n / scale:.2f} {suffix}"
  return f"{n:.0f} B"


def report(config: ml_collections.ConfigDict, mesh_sizes: dict[str, int], device_memory_gb: float = 0.0,
           backend: str | None = None, name: str = "") -> str:
  """The table `python -m lm.params` prints."""
  config = config_lib.for_platform(config, backend or jax.default_backend())
  m = config.model
  seq, batch = config.data.seq_len, config.train.global_batch_size
  counts = count_parameters(m)
  flops = flops_per_token(m, seq)
  memory = memory_per_device(config, mesh_sizes, backend)
  act = memory["activation_detail"]
  lines = []

  def row(label, value, note=""):
    lines.append(f"  {label:<44s}{value:>22s}  {note}".rstrip())

  kv = f", {m.num_kv_heads} kv" if m.num_kv_heads != m.num_heads else ""
  pattern = "/".join(m.attention_pattern) + (f" (window {m.sliding_window})" if "local" in m.attention_pattern else "")
  moe_note = (f"; MoE {m.num_experts} experts top-{m.experts_per_token} every {m.moe_every} layer(s)"
              if m.num_experts else "")
  lines.append(f"{name or 'model'}: d_model {m.d_model}, {m.num_layers} layers, {m.num_heads} heads{kv} x "
               f"{m.head_dim}, ffn {m.ffn_dim} {m.mlp_activation}, vocab {m.vocab_size}, "
               f"{m.position_embedding} positions, {m.norm_position}-{m.norm_type}, attention {pattern}{moe_note}")
  lines.append("")
  lines.append("Parameters")
  row("total", f"{counts['total']:,}", _count(counts["total"]))
  row("embedding", f"{counts['embedding']:,}", _count(counts["embedding"]))
  row("  token table", f"{counts['token_embedding']:,}", "tied: also the output projection" if m.tie_embeddings else "")
  row("  position table", f"{counts['position_embedding']:,}")
  row("  output matrix (untied)", f"{counts['output']:,}")
  row("non-embedding", f"{counts['non_embedding']:,}", _count(counts["non_embedding"]))
  if m.num_experts:
    row("  expert weights (all experts)", f"{counts['experts']:,}", _count(counts["experts"]))
    row(f"active per token (top-{m.experts_per_token} of {m.num_experts} experts)", f"{counts['active']:,}",
        _count(counts["active"]))
    row("active non-embedding", f"{counts['active_non_embedding']:,}", _count(counts["active_non_embedding"]))
  ratio = counts["approx_12ld2"] / counts["active_non_embedding"]
  row("12·L·d² approximation", f"{counts['approx_12ld2']:,}",
      f"{_count(counts['approx_12ld2'])} ({ratio:.2f} x the {'active ' if m.num_experts else ''}non-embedding count)")
  lines.append("")
  lines.append(f"Training FLOPs per token (seq_len {seq}, forward + backward)")
  row("N: matmul weights per token", f"{flops['matmul_weights']:,.0f}",
      "attention + MLP" + (" (active experts + router)" if m.num_experts else "") + " + output projection; "
      "no norms, biases, lookups")
  row("6N", f"{flops['six_n']:,.0f}", _count(flops["six_n"]))
  row("attention QK^T and AV", f"{flops['attention']:,.0f}",
      f"{_count(flops['attention'])}: 12·keys·heads·head_dim per layer, keys = visible keys per query")
  row("total (used for MFU)", f"{flops['total']:,.0f}",
      f"{_count(flops['total'])}; attention is {100 * flops['attention'] / flops['total']:.1f}%")
  if m.num_experts:
    row("MoE dispatch + combine einsums (not counted)", f"{flops['moe_dispatch']:,.0f}", _count(flops["moe_dispatch"]))
  row(f"per step ({batch} x {seq} tokens)", f"{flops['total'] * batch * seq:.3e}")
  run = training_compute(config)
  lines.append("")
  lines.append(f"Training run ({config.train.steps:,} steps)")
  row("D: tokens", f"{run['tokens']:,.0f}", _count(run["tokens"]))
  row("C = 6·N·D (N total)", f"{run['compute_6nd']:.3e}", "Hoffmann et al.")
  row("C = 6·N·D (N non-embedding)", f"{run['compute_6nd_non_embedding']:.3e}", "Kaplan et al.")
  row("C full count (6N + attention per token)", f"{run['compute']:.3e}",
      f"{run['compute'] / run['compute_6nd']:.3f} x 6·N·D")
  lines.append("")
  mesh_text = " ".join(f"{axis}={mesh_sizes[axis]}" for axis in sharding.MESH_AXES)
  lines.append(f"Memory per device (mesh {mesh_text}; {memory['per_device_batch']:g} x {seq} tokens per device; "
               f"remat {m.remat_policy}; {m.compute_dtype} compute; attention {act['attention_impl']})")
  row(f"parameters ({m.param_dtype})", _bytes(memory["parameters"]))
  row(f"gradients ({m.param_dtype})", _bytes(memory["gradients"]))
  row("optimizer state (AdamW mu, nu, counts)", _bytes(memory["optimizer"]))
  row("activations", _bytes(memory["activations"]))
  row("  kept across layers", _bytes(act["kept_across_layers"]))
  row("  final norm, batch, output matrix copy", _bytes(act["final"]))
  peak = "loss" if act["loss_phase"] >= act["layer_phase"] else "layer"
  row("  loss phase (logits buffers)", _bytes(act["loss_phase"]), "<- peak" if peak == "loss" else "")
  row("  layer phase (one group's backward)", _bytes(act["layer_phase"]), "<- peak" if peak == "layer" else "")
  row("total", _bytes(memory["total"]))
  if device_memory_gb > 0:
    fits = memory["total"] <= device_memory_gb * 1e9
    row(f"fits in {device_memory_gb:g} GB", "yes" if fits else "NO",
        f"{100 * memory['total'] / (device_memory_gb * 1e9):.0f}% of the device")
  return "\n".join(lines)


def sharding_report(config: ml_collections.ConfigDict, mesh_sizes: dict[str, int]) -> str:
  """Every parameter's path, shape, dtype, mesh PartitionSpec and bytes per device, then the totals of the
  parameters and the optimizer state against an even split over all devices."""
  rules = sharding.rules(config.mesh)
  state = abstract_state(config)
  num_devices = math.prod(mesh_sizes[axis] for axis in sharding.MESH_AXES)
  param_lines, param_total, param_local = sharding.describe(state["params"], rules, mesh_sizes)
  _, opt_total, opt_local = sharding.describe(state["opt_state"], rules, mesh_sizes)
  mesh_text = " ".join(f"{axis}={mesh_sizes[axis]}" for axis in sharding.MESH_AXES)
  lines = [f"Parameter shardings (mesh {mesh_text}; optimizer moments share each parameter's layout)",
           f"{'parameter':56s} {'shape':22s} {'dtype':9s} {'PartitionSpec':44s} {'bytes/device':>14s}"]
  lines += param_lines
  lines.append("")
  for label, total, local in (("parameters", param_total, param_local), ("optimizer state", opt_total, opt_local),
                              ("parameters + optimizer state", param_total + opt_total, param_local + opt_local)):
    lines.append(f"{label:<30s} total {_bytes(total):>10s}  per device {_bytes(local):>10s}  "
                 f"({local / (total / num_devices):.3f} x an even split over {num_devices} devices)")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  del argv
  flag_values = flags.FLAGS
  if not flag_values["verbosity"].present:  # backend-probing INFO lines only when asked for
    logging.set_verbosity(logging.WARNING)
  config = flag_values.config
  try:
    overrides = parse_mesh(flag_values.mesh)
    sizes = resolve_mesh(config.mesh, overrides, flag_values.num_devices)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  data_defaulted = config.mesh.data == -1 and "data" not in overrides and not flag_values.num_devices
  for key, size in overrides.items():
    config.mesh[key] = size
  config.mesh.data = sizes["data"] // config.mesh.dcn_data
  try:
    config_lib.validate(config, math.prod(sizes.values()), 1)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    sys.exit(2)
  if data_defaulted:
    print("note: mesh.data = -1 is taken as 1; pass --num_devices N or --mesh data=N for more data parallelism\n")
  print(report(config, sizes, flag_values.device_memory_gb, flag_values.platform or None,
               name=config_flags.get_config_filename(flag_values["config"])))
  if flag_values.shardings:
    print()
    print(sharding_report(config, sizes))


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (lm.launch defines its own --config)."""
  config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/NAME.py).", lock_config=True)
  flags.DEFINE_string("mesh", "", "Mesh sizes overriding config.mesh, e.g. data=2,fsdp=4,expert=1,tensor=2; the "
                      "devices need not exist.")
  flags.DEFINE_integer("num_devices", 0, "Devices that mesh.data = -1 fills; 0 = data 1.")
  flags.DEFINE_float("device_memory_gb", 0.0, "Memory of one device in GB (1e9 bytes); prints whether the step fits.")
  flags.DEFINE_enum("platform", "", ["", "cpu", "gpu", "tpu"], "Platform that decides attention_impl 'auto' "
                    "(flash attention on gpu); '' = this machine's.")
  flags.DEFINE_bool("shardings", False, "Also print every parameter's PartitionSpec and bytes per device.")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  _define_flags()
  app.run(main)
