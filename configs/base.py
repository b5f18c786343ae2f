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
  model.ffn_dim = 1536  # hidden width of the MLP (of each expert, for MoE layers)
  model.mlp_activation = "swiglu"  # relu | gelu | relu2 (squared ReLU) | swiglu (gated SiLU: three matrices)
  model.use_bias = False  # biases in every dense layer and in LayerNorm (GPT-2 style)
  model.position_embedding = "rope"  # rope | learned (absolute table) | alibi (linear attention bias) | none
  model.max_seq_len = 2048  # context length: longest training row and decode, rows of a learned position table
  model.rope_theta = 10000.0  # RoPE base wavelength
  model.rope_scaling = "none"  # RoPE context extension: none | linear (position interpolation) | ntk (NTK-aware base) | yarn | llama3 (Llama 3.1)
  model.rope_scaling_factor = 1.0  # s: how many times longer than rope_original_max_seq_len the context becomes (>= 1; 1 = plain RoPE)
  model.rope_original_max_seq_len = 2048  # yarn / llama3: the context length the model was pre-trained at (their frequency bands)
  model.rope_yarn_beta_fast = 32.0  # yarn: channel pairs turning more than this many times over the original length are kept
  model.rope_yarn_beta_slow = 1.0  # yarn: pairs turning fewer times are fully interpolated; a ramp between
  model.rope_llama3_low_frequency_factor = 1.0  # llama3: wavelengths above original length / this are interpolated
  model.rope_llama3_high_frequency_factor = 4.0  # llama3: wavelengths below original length / this are kept; blended between
  model.norm_type = "rmsnorm"  # rmsnorm | layernorm
  model.norm_position = "pre"  # pre: x + f(norm(x)) and a final norm; post: norm(x + f(x))
  model.norm_eps = 1e-6  # epsilon of every norm
  model.qk_norm = False  # normalise queries and keys per head (norm_type) before positions and the dot product
  model.attention_logit_softcap = 0.0  # attention logits become c*tanh(logits/c) with this c; 0 = off
  model.sliding_window = 0  # 'local' layers see keys fewer than this many positions away (causal: the last this many)
  model.attention_pattern = ("global",)  # 'global' | 'local' per layer, repeated over depth (length divides num_layers)
  model.attention_impl = "auto"  # xla | dot_product_attention (jax.nn: cuDNN flash on GPU) | blockwise | auto
  model.attention_query_chunk = 0  # xla causal attention in query chunks of this many, each over the keys up to its end (0 = one block)
  model.attention_block_size = 512  # query and key block of blockwise attention (never builds the seq x seq matrix)
  model.blockwise_min_seq_len = 1024  # auto: blockwise from this length on (but cuDNN on GPU with 16-bit compute)
  model.num_experts = 0  # experts of MoE MLP layers; 0 = every MLP dense
  model.experts_per_token = 2  # top-k: experts each token is routed to
  model.moe_every = 1  # MLP of every k-th layer (the k-th, 2k-th, ...) is MoE when num_experts > 0
  model.capacity_factor = 1.25  # expert capacity per group = factor * group * top-k / experts; overflow dropped, counted
  model.moe_group_size = 1024  # tokens per routing group (capacity is per group); a shorter row is one group
  model.load_balance_loss_weight = 0.01  # weight of the Switch load-balancing loss num_experts * sum_i f_i * P_i
  model.router_z_loss_weight = 0.001  # weight of the router z-loss mean(logsumexp(router logits)^2)
  model.objective = "causal"  # causal (next-token LM) | masked (BERT-style: bidirectional, predict corrupted tokens)
  model.masked_lm_fraction = 0.15  # masked objective: share of tokens selected for prediction
  model.masked_lm_mask_random_keep = (0.8, 0.1, 0.1)  # masked: selected tokens become <mask> / random token / stay
  model.logits_z_loss_weight = 0.0  # weight of the output z-loss mean(logsumexp(logits)^2); 0 = off
  model.tie_embeddings = True  # output projection is the transposed input embedding
  model.init_scheme = "scaled_output"  # normal | scaled_output (residual outputs / sqrt(2L)) | fan_in (1/sqrt(fan_in))
  model.init_std = 0.02  # std of the normal init of embeddings and kernels (normal and scaled_output schemes)
  model.unroll_layers = False  # unroll the scan over depth: same parameters, no per-layer slicing or stacking; compile time grows with depth
  model.remat_policy = "none"  # activation recomputation per layer: none | full | save_matmuls (keep matmul outputs)
  model.param_dtype = "float32"  # dtype of parameters (the master weights)
  model.compute_dtype = "auto"  # dtype of matmuls and activations; auto = float32 on CPU, bfloat16 on GPU / TPU

  config.data = data = ml_collections.ConfigDict()
  data.path = ""  # documents tokenized at launch into RUN_DIR/tokens: JSONL file or folder; '' = the embedded corpus
  data.tokens_dir = ""  # token shards from `python -m data.shards` (their tokenizer is used); '' = tokenize data.path
  data.seq_len = 256  # tokens per packed training row
  data.validation_fraction = 0.05  # launch-time tokenization: share of documents held out (split by document id)
  data.split_seed = 0  # launch-time tokenization: seed of the train / validation split and the tokenizer's line sample
  data.tokenizer_max_sentences = 500000  # launch-time tokenization: lines sampled (seeded) from the training split
  data.shuffle_seed = 0  # seed of each source's document order and of every epoch's row order
  data.mixture = ()  # (source, weight) pairs: share of training rows per source; () = by size (mixture_temperature)
  data.mixture_temperature = 1.0  # without mixture weights: source i drawn in proportion to tokens_i^(1/T)
  data.mixture_epochs = ()  # (source, epochs) pairs: shown exactly this many times over train.steps
  data.curriculum = ()  # (step, ((source, weight), ...)) stages: from that step on these weights replace mixture
  data.context_stages = ()  # (step, seq_len, rope_scaling_factor): from that step rows are seq_len long (fewer rows: tokens per step stay) and RoPE scaled
  data.replay_sources = ()  # sources of the original (pre-training) domain: replayed at replay_fraction, evaluated as eval/original
  data.replay_fraction = 0.5  # share of every batch's rows from replay_sources (the rest from the others, the new domain); 0 = none
  data.num_workers = 0  # grain worker processes reading batches; 0 = threads of the training process
  data.prefetch_batches = 1  # batches read ahead (one thread each); on a 2-core host more threads slow the step ~15%
  data.verify_checksums = True  # sha256 of every shard against the manifest at start (sizes are always checked)

  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1  # data-parallel mesh axis size; -1 = all devices not used by the other axes
  mesh.fsdp = 1  # fully-sharded data-parallel axis: parameters and optimizer state sharded, batch too
  mesh.expert = 1  # expert-parallel axis: MoE experts sharded; dense layers use it as more data parallelism
  mesh.tensor = 1  # tensor-parallel axis: heads, MLP width and vocabulary sharded
  # The sizes above are within one slice (ICI / NVLink). Across slices or nodes (DCN) each axis is
  # multiplied by its dcn_ size; slices are outermost, so only that axis's collectives cross the DCN.
  mesh.dcn_data = 1  # slices the data axis spans (multi-slice data parallelism: gradients cross the DCN once a step)
  mesh.dcn_fsdp = 1  # slices the fsdp axis spans (parameter gathers cross the DCN every layer)
  mesh.dcn_expert = 1  # slices the expert axis spans
  mesh.dcn_tensor = 1  # slices the tensor axis spans (rarely wise: activations cross the DCN every layer)
  # Logical axis name -> mesh axes. Parameter axes and activation axes have separate names,
  # so that e.g. the embed dimension of weights is FSDP-sharded while that of activations is not.
  mesh.rules = (
      ("batch", ("data", "fsdp", "expert")),
      ("activation_seq", None),
      ("activation_embed", None),
      ("activation_heads", "tensor"),
      ("activation_kv_heads", "tensor"),
      ("activation_mlp", "tensor"),
      ("activation_vocab", "tensor"),
      ("activation_expert", "expert"),
      ("activation_batch_no_expert", ("data", "fsdp")),  # batch of expert-major MoE activations
      ("layers", None),
      ("vocab", "tensor"),
      ("embed", "fsdp"),
      ("heads", "tensor"),
      ("kv_heads", "tensor"),
      ("head_dim", None),
      ("mlp", "tensor"),
      ("expert", "expert"),
  )

  config.optim = optim = ml_collections.ConfigDict()
  optim.peak_learning_rate = 3e-4  # learning rate at the end of warmup
  optim.warmup_steps = 100  # linear warmup from 0 to the peak
  optim.end_learning_rate_fraction = 0.1  # cosine decay ends at this fraction of the peak, at train.steps
  optim.weight_decay = 0.1  # AdamW decoupled weight decay (not applied to norm scales or biases)
  optim.b1 = 0.9  # AdamW first-moment decay
  optim.b2 = 0.95  # AdamW second-moment decay
  optim.eps = 1e-8  # AdamW epsilon
  optim.clip_norm = 1.0  # global gradient-norm clipping threshold
  optim.state_dtype = "float32"  # dtype AdamW's moments are stored in (updated in float32): float32 | bfloat16

  config.train = train = ml_collections.ConfigDict()
  train.run_dir = "runs/default"  # holds config.json, tokenizer/, checkpoints/, events/, metrics.jsonl, samples.txt
  train.steps = 1000  # optimizer steps in the whole run (the schedule ends here)
  train.global_batch_size = 64  # packed rows per step, summed over all devices
  train.microbatches = 1  # gradient accumulation: the step's batch runs in this many pieces, gradients summed in float32
  train.seed = 0  # seed of parameter init and of the RNG carried in the train state
  train.init_from = ""  # start from this model's parameters: a run dir (newest checkpoint), RUN_DIR/checkpoints/STEP or a Hugging Face Llama dir ('' = random init)
  train.init_learning_rate_fraction = 0.2  # init_from: peak learning rate = this x the source run's (Hugging Face: x optim.peak_learning_rate); 0 = optim's as set
  train.init_resize = False  # init_from: where vocab rows, layers or position rows differ, copy what fits and keep the rest freshly initialised (else refused)
  train.host_allocator = "reuse"  # glibc malloc: reuse (keep freed memory: no page faults per step; RSS stays at peak) | system
  train.cpu_dot_library = "onednn"  # XLA:CPU matmuls: onednn (spreads batched matmuls over the cores) | ynnpack (XLA's default); ignored off CPU

  config.checkpoint = ckpt = ml_collections.ConfigDict()
  ckpt.every_steps = 200  # save a checkpoint every this many steps (and always at the end)
  ckpt.max_to_keep = 3  # keep the last K checkpoints
  ckpt.keep_every_steps = 0  # also keep every checkpoint whose step is a multiple of this (0 = only the last K)

  config.eval = ev = ml_collections.ConfigDict()
  ev.every_steps = 200  # validation loss every this many steps (and always at the end)
  ev.at_start = False  # also evaluate before the first step of a new run (step 0: where forgetting / adaptation curves start)
  ev.masked_lm_seed = 0  # masked objective: seed of the fixed corruption of the validation rows
  ev.max_batches = 16  # validation batches per evaluation, a fixed sample of rows (0 = the whole validation split)
  ev.sample_prompts = ("def read_config(path):\n", "The list type")  # fixed prompts whose continuations are sampled
  ev.sample_every_steps = 1000  # sample the prompts every this many steps (and always at the end)
  ev.sample_tokens = 64  # tokens sampled after the prompt
  ev.sample_temperature = 0.8  # softmax temperature of sampling (0 = greedy)
  ev.sample_top_k = 40  # sample among the k most likely tokens (0 = all)
  ev.tasks = ()  # (task, JSONL path) pairs scored in training; task: hellaswag | arc_easy | arc_challenge | piqa | lambada
  ev.tasks_every_steps = 0  # score eval.tasks every this many steps (and always at the end); 0 = only at the end
  ev.tasks_shots = 0  # solved examples before each item, drawn (fixed seed) from the same file, never the item itself
  ev.tasks_max_items = 200  # items scored per task and evaluation (0 = all): bounds the pause in training
  ev.tasks_too_long = "truncate"  # requests longer than data.seq_len: truncate (context from the left) | skip

  config.log = log = ml_collections.ConfigDict()
  log.every_steps = 10  # progress line every this many steps (metrics.jsonl and tensorboard get every step)
  log.noise_scale_every_steps = 100  # gradient noise scale estimate every this many steps (0 = off)
  log.peak_flops_per_device = 0.0  # peak FLOP/s of one device for MFU; 0 = known device table, else a measured matmul

  config.guard = guard = ml_collections.ConfigDict()
  guard.policy = "skip"  # anomalous step: skip (drop its update) | rollback (to the last good checkpoint) | log (only)
  guard.window = 32  # accepted steps of loss / gradient-norm history the spike tests use (they start once it is full)
  guard.loss_spike_stds = 6.0  # loss spike: loss > window mean + this many window standard deviations (0 = off)
  guard.grad_norm_spike_factor = 10.0  # gradient spike: grad norm > this times the window median (0 = off)
  guard.rollback_learning_rate_factor = 0.5  # rollback: the learning rate is multiplied by this at each rollback
  guard.max_rollbacks = 3  # rollback: the run stops with an error at the rollback after this many

  config.lock()
  return config
