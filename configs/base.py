"""The base config: every field the code reads, defined once, each with a one-line comment.

Experiment configs (`configs/NAME.py`) start from `get_config()` here and change values;
the base config is locked, so a misspelt field in an experiment file is an error. Any
field can be overridden on the command line: `--config.train.steps=200`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.model = model = ml_collections.ConfigDict()
  model.vocab_size = 8192  # tokens in the vocabulary; the tokenizer is trained to exactly this size
  model.d_model = 512  # width of the residual stream
  model.num_layers = 8  # transformer blocks (scanned: compile time does not grow with depth)
  model.num_heads = 8  # query heads
  model.num_kv_heads = 8  # key/value heads; < num_heads is grouped-query attention, 1 is multi-query
  model.head_dim = 64  # width of one attention head
  model.ffn_dim = 1536  # hidden width of the SwiGLU MLP
  model.rope_theta = 10000.0  # RoPE base wavelength
  model.norm_eps = 1e-6  # epsilon of RMSNorm
  model.tie_embeddings = True  # output projection is the transposed input embedding
  model.init_std = 0.02  # std of the normal init of embeddings and kernels (output projections scaled by 1/sqrt(2*num_layers))
  model.param_dtype = "float32"  # dtype of parameters (the master weights)
  model.compute_dtype = "float32"  # dtype of matmuls and activations: float32 on CPU, bfloat16 on accelerators

  config.data = data = ml_collections.ConfigDict()
  data.path = ""  # '' = the embedded corpus (Python docs + stdlib source); else a JSONL file or a folder of text files
  data.seq_len = 256  # tokens per packed training row
  data.validation_fraction = 0.05  # share of documents held out for validation (split by document id)
  data.split_seed = 0  # seed of the train / validation split
  data.shuffle_seed = 0  # seed of the training order (documents and packed rows)
  data.num_packing_bins = 64  # rows packed at once by first-fit; more bins = less padding
  data.tokenizer_max_sentences = 500000  # lines sampled from the training split to train the tokenizer

  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1  # data-parallel mesh axis size; -1 = all devices not used by the other axes
  mesh.fsdp = 1  # fully-sharded data-parallel axis: parameters and optimizer state sharded, batch too
  mesh.tensor = 1  # tensor-parallel axis: heads, MLP width and vocabulary sharded
  # Logical axis name -> mesh axes. Parameter axes and activation axes have separate names,
  # so that e.g. the embed dimension of weights is FSDP-sharded while that of activations is not.
  mesh.rules = (
      ("batch", ("data", "fsdp")),
      ("activation_seq", None),
      ("activation_embed", None),
      ("activation_heads", "tensor"),
      ("activation_kv_heads", "tensor"),
      ("activation_mlp", "tensor"),
      ("activation_vocab", "tensor"),
      ("layers", None),
      ("vocab", "tensor"),
      ("embed", "fsdp"),
      ("heads", "tensor"),
      ("kv_heads", "tensor"),
      ("head_dim", None),
      ("mlp", "tensor"),
  )

  config.optim = optim = ml_collections.ConfigDict()
  optim.peak_learning_rate = 3e-4  # learning rate at the end of warmup
  optim.warmup_steps = 100  # linear warmup from 0 to the peak
  optim.end_learning_rate_fraction = 0.1  # cosine decay ends at this fraction of the peak, at train.steps
  optim.weight_decay = 0.1  # AdamW decoupled weight decay (not applied to norm scales)
  optim.b1 = 0.9  # AdamW first-moment decay
  optim.b2 = 0.95  # AdamW second-moment decay
  optim.eps = 1e-8  # AdamW epsilon
  optim.clip_norm = 1.0  # global gradient-norm clipping threshold

  config.train = train = ml_collections.ConfigDict()
  train.run_dir = "runs/default"  # holds config.json, tokenizer/, checkpoints/, events/, metrics.jsonl, samples.txt
  train.steps = 1000  # optimizer steps in the whole run (the schedule ends here)
  train.global_batch_size = 64  # packed rows per step, summed over all devices
  train.seed = 0  # seed of parameter init and of the RNG carried in the train state

  config.checkpoint = ckpt = ml_collections.ConfigDict()
  ckpt.every_steps = 200  # save a checkpoint every this many steps (and always at the end)
  ckpt.max_to_keep = 3  # keep the last K checkpoints

  config.eval = ev = ml_collections.ConfigDict()
  ev.every_steps = 200  # validation loss every this many steps (and always at the end)
  ev.max_batches = 16  # validation batches per evaluation, a fixed sample of rows (0 = the whole validation split)
  ev.sample_prompt = "def read_config(path):\n"  # fixed prompt whose continuation is sampled at the end
  ev.sample_tokens = 64  # tokens sampled after the prompt
  ev.sample_temperature = 0.8  # softmax temperature of sampling (0 = greedy)
  ev.sample_top_k = 40  # sample among the k most likely tokens (0 = all)

  config.log = log = ml_collections.ConfigDict()
  log.every_steps = 10  # progress line, tensorboard and metrics.jsonl every this many steps
  log.peak_flops_per_device = 0.0  # peak FLOP/s of one device for MFU; 0 = known device table, else a measured matmul

  config.lock()
  return config
