"""The benchmark's PyTorch peer: the model of a `bench_*` config written in PyTorch, for timing only.

It is the shape nanoGPT trains (and `configs/bench_29m.py` describes): token and learned
position embeddings, pre-LayerNorm blocks of causal self-attention (one fused qkv
projection, `scaled_dot_product_attention`) and a GELU MLP, biases everywhere, a final
LayerNorm and logits through the tied embedding; AdamW with global-norm clipping, float32.
It counts the same FLOPs as our step, so their step times compare the two implementations.

torch is a benchmark-only dependency (`pip install torch==2.13.0`); `available()` says
whether it can be imported, and the benchmark skips the peer with a message when not.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import numpy as np


class Unsupported(ValueError):
  """The config has an architecture option the reference does not implement."""


def available() -> bool:
  return importlib.util.find_spec("torch") is not None


def check_supported(cfg: Any) -> None:
  """Raises Unsupported unless `cfg` (config.model) is the shape this reference builds."""
  wanted = dict(mlp_activation="gelu", norm_type="layernorm", norm_position="pre", position_embedding="learned",
                use_bias=True, tie_embeddings=True, objective="causal", num_experts=0, qk_norm=False,
                attention_logit_softcap=0.0, sliding_window=0)
  wrong = [f"{key}={cfg[key]!r} (needs {value!r})" for key, value in wanted.items() if cfg[key] != value]
  if cfg.num_kv_heads != cfg.num_heads or cfg.head_dim * cfg.num_heads != cfg.d_model:
    wrong.append(f"num_heads {cfg.num_heads}, num_kv_heads {cfg.num_kv_heads}, head_dim {cfg.head_dim} "
                 f"(needs multi-head attention with num_heads * head_dim = d_model {cfg.d_model})")
  if wrong:
    raise Unsupported("the PyTorch reference is the nanoGPT shape; model." + ", model.".join(wrong))


def build(model_config: Any, optim_config: Any, seed: int = 0):
  """(model, optimizer) of the config's shapes; torch imported here so this module loads without it."""
  import torch
  from torch import nn
  from torch.nn import functional as F

  cfg = model_config
  check_supported(cfg)
  d, heads, ffn = cfg.d_model, cfg.num_heads, cfg.ffn_dim

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.ln_1 = nn.LayerNorm(d, eps=cfg.norm_eps)
      self.qkv = nn.Linear(d, 3 * d)
      self.attn_out = nn.Linear(d, d)
      self.ln_2 = nn.LayerNorm(d, eps=cfg.norm_eps)
      self.up = nn.Linear(d, ffn)
      self.down = nn.Linear(ffn, d)

    def forward(self, x):
      batch, seq, _ = x.shape
      q, k, v = self.qkv(self.ln_1(x)).split(d, dim=2)
      q, k, v = (t.view(batch, seq, heads, d // heads).transpose(1, 2) for t in (q, k, v))
      attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
      x = x + self.attn_out(attended.transpose(1, 2).reshape(batch, seq, d))
      return x + self.down(F.gelu(self.up(self.ln_2(x)), approximate="tanh"))

  class Model(nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(cfg.vocab_size, d)
      self.position_embed = nn.Embedding(cfg.max_seq_len, d)
      self.blocks = nn.ModuleList(Block() for _ in range(cfg.num_layers))
      self.final_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
      for name, p in self.named_parameters():
        if p.dim() > 1:
          std = cfg.init_std / math.sqrt(2 * cfg.num_layers) if name.endswith(("attn_out.weight", "down.weight")) \
              else cfg.init_std
          nn.init.normal_(p, std=std)
        elif name.endswith("bias"):
          nn.init.zeros_(p)

    def forward(self, inputs, targets):
      positions = torch.arange(inputs.shape[1], device=inputs.device)
      x = self.embed(inputs) + self.position_embed(positions)
      for block in self.blocks:
        x = block(x)
      logits = self.final_norm(x) @ self.embed.weight.t()
      return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))

  torch.manual_seed(seed)
  model = Model()
  decayed = [p for n, p in model.named_parameters() if p.dim() > 1]
  other = [p for n, p in model.named_parameters() if p.dim() <= 1]
  optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": optim_config.weight_decay},
                                 {"params": other, "weight_decay": 0.0}],
                                lr=optim_config.peak_learning_rate, betas=(optim_config.b1, optim_config.b2),
                                eps=optim_config.eps)
  return model, optimizer


def load_params(model: Any, params: Any) -> None:
  """Copies our parameter tree (`lm.model` names, layers stacked on a leading axis) into `model` of `build`."""
  import torch

  def put(target, value):
    with torch.no_grad():
      target.copy_(torch.from_numpy(np.array(value, np.float32)))  # a writable copy

  put(model.embed.weight, params["embed"]["embedding"])
  put(model.position_embed.weight, params["position_embed"]["embedding"])
  put(model.final_norm.weight, params["final_norm"]["scale"])
  put(model.final_norm.bias, params["final_norm"]["bias"])
  layer = params["blocks"]["layer_0"]
  for i, block in enumerate(model.blocks):
    attention, mlp = layer["attention"], layer["mlp"]
    d = block.qkv.in_features
    put(block.qkv.weight, np.concatenate([np.asarray(attention[n][i]).reshape(d, -1).T
                                          for n in ("query", "key", "value")]))
    put(block.qkv.bias, np.concatenate([np.asarray(attention[f"{n}_bias"][i]).reshape(-1)
                                        for n in ("query", "key", "value")]))
    put(block.attn_out.weight, np.asarray(attention["out"][i]).reshape(-1, d).T)
    put(block.attn_out.bias, attention["out_bias"][i])
    put(block.up.weight, np.asarray(mlp["up"][i]).T)
    put(block.up.bias, mlp["up_bias"][i])
    put(block.down.weight, np.asarray(mlp["down"][i]).T)
    put(block.down.bias, mlp["down_bias"][i])
    for norm, name in ((block.ln_1, "attention_norm"), (block.ln_2, "mlp_norm")):
      put(norm.weight, layer[name]["scale"][i])
      put(norm.bias, layer[name]["bias"][i])


class TorchStep:
  """One AdamW training step of the reference model on a fixed batch per call; returns the step's loss.

  bfloat16: the forward and backward under autocast to bfloat16 (float32 master weights), as our
  accelerator configs compute. compile_model: the model under torch.compile (compiled at the first call).
  """

  def __init__(self, model_config: Any, optim_config: Any, tokens: np.ndarray, compile_model: bool,
               device: str = "cpu", bfloat16: bool = False):
    import torch

    self.torch = torch
    self.model, self.optimizer = build(model_config, optim_config)
    self.model.to(device)
    self.forward = torch.compile(self.model) if compile_model else self.model
    tokens = torch.from_numpy(np.asarray(tokens, np.int64)).to(device)  # [batch, seq + 1]
    self.inputs, self.targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    self.device, self.bfloat16, self.clip_norm = device, bfloat16, optim_config.clip_norm

  def __call__(self) -> float:
    torch = self.torch
    self.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=self.device, dtype=torch.bfloat16, enabled=self.bfloat16):
      loss = self.forward(self.inputs, self.targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
    self.optimizer.step()
    return loss.item()  # waits for the step, as our benchmark reads its loss
