"""Perplexity filter: drops documents a reference language model finds too surprising (or too predictable).

CCNet (Wenzek et al. 2020) scores web text with a 5-gram Kneser-Ney model trained on
Wikipedia and keeps documents by their perplexity relative to the distribution of
perplexities; Marion et al. 2023 ("When Less is More") prune pre-training data by the
perplexity of a reference transformer the same way. Two scorers are offered (`perplexity.model`):

* ``ngram``: an interpolated Kneser-Ney word n-gram model (Kneser & Ney 1995; the
  interpolated form with one absolute discount D of Chen & Goodman 1998)
  trained on the `reference` corpora. Words are the lowercased ``\\w+`` runs and single
  punctuation marks; each document is padded with ``order - 1`` ``<s>`` tokens in front and
  one ``</s>`` at the end, and words never seen in training are read as ``<unk>``. For a
  word w after the context h (the previous order - 1 tokens), with h' = h minus its first
  word:

      P_k(w | h) = max(a_k(h w) - D, 0) / a_k(h .)  +  D * T_k(h) / a_k(h .) * P_{k-1}(w | h')

  where a_k is the raw count for the highest order and the *continuation count* (the
  number of distinct words seen before the n-gram) for lower orders, a_k(h .) is its sum
  over w and T_k(h) the number of distinct w with a_k(h w) > 0. A context never seen at
  level k leaves the level-(k-1) estimate unchanged. The recursion ends in the uniform
  distribution over the predicted vocabulary (training words, ``</s>`` and ``<unk>``), so
  ``<unk>`` has a small nonzero probability and every P_k sums to 1 over that vocabulary.
  Reference documents are split by a seeded hash of their id; `heldout_fraction` of them
  are not trained on but scored, and 101 quantiles (0, 1, ..., 100 %) of their perplexities
  are stored with the model. Counts live in Python dicts keyed by id tuples, which suits
  reference corpora of up to a few million words (about 2 microseconds per scored word).
* ``checkpoint``: the latest checkpoint and tokenizer of one of this project's run
  directories score each document (``[BOS] + tokens + [EOS]``, truncated to the model's
  `max_seq_len`); the perplexity is exp of the mean next-token loss. The quantiles come
  from scoring every `reference` document with that checkpoint when the run starts
  (`ensure_model`), written to `model_path` (or the run's default model path) together
  with the run directory and checkpoint step they belong to; the filter loads them at
  construction and refuses them if the run directory has moved on to another checkpoint.

`PerplexityFilter` drops a document whose perplexity is above the `high_quantile` point
of the reference distribution ("perplexity_high") or below the `low_quantile` point
("perplexity_low": repeated boilerplate is often unnaturally predictable). Models are
saved as .npz archives of integer arrays plus a JSON settings string; nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import zipfile
from typing import Callable, Iterable

import ml_collections
import numpy as np

from data import corpus
from data.corpus import Document
from data.stages import Drop

UNK, EOS, BOS = "<unk>", "</s>", "<s>"
_UNK_ID, _EOS_ID, _BOS_ID = 0, 1, 2  # fixed ids at the head of every vocabulary
_WORD = re.compile(r"\w+|[^\w\s]")
QUANTILE_GRID = np.linspace(0.0, 1.0, 101)  # the quantile levels stored with a model
_NGRAM_KIND = "kneser_ney_ngram_model"
_CHECKPOINT_KIND = "checkpoint_perplexity_quantiles"
_FORMAT_VERSION = 1
MODELS = ("ngram", "checkpoint")


def words(text: str) -> list[str]:
  """The model's tokens of `text`: lowercased runs of word characters and single punctuation marks."""
  return _WORD.findall(text.lower())


class NGramModel:
  """An interpolated Kneser-Ney word n-gram model (see the module docstring for the estimate).

  Attributes:
    order: n-gram order (>= 1).
    discount: absolute discount D in (0, 1).
    vocab: the tokens; ids 0, 1, 2 are <unk>, </s>, <s>, then training words in first-seen order.
    counts: counts[k - 1] maps a k-gram (tuple of ids) to its raw count (k = order) or its
      continuation count (k < order).
    reference_quantiles: float64 [101] perplexities of held-out reference documents at the
      levels QUANTILE_GRID, or None before they are measured.
  """

  def __init__(self, order: int, discount: float, vocab: list[str], counts: list[dict[tuple, int]],
               reference_quantiles: np.ndarray | None = None):
    self.order = order
    self.discount = discount
    self.vocab = vocab
    self.counts = counts
    self.reference_quantiles = reference_quantiles
    self._ids = {word: i for i, word in enumerate(vocab)}
    # Per level: context -> (sum of the counts of its n-grams, number of distinct next words).
    self._contexts: list[dict[tuple, tuple[int, int]]] = []
    for level in counts:
      totals: dict[tuple, list[int]] = {}
      for gram, count in level.items():
        entry = totals.setdefault(gram[:-1], [0, 0])
        entry[0] += count
        entry[1] += 1
      self._contexts.append({h: (total, types) for h, (total, types) in totals.items()})

  @property
  def num_predicted(self) -> int:
    """Size of the predicted vocabulary: every token but <s> (training words, </s>, <unk>)."""
    return len(self.vocab) - 1

  def token_ids(self, text: str) -> list[int]:
    """Ids of the document's tokens, unknown words as <unk>, padded with <s> ... and </s>."""
    get = self._ids.get
    return [_BOS_ID] * (self.order - 1) + [get(w, _UNK_ID) for w in words(text)] + [_EOS_ID]

  def probability(self, context: Iterable[str], word: str) -> float:
    """P(word | the last order - 1 tokens of `context`); out-of-vocabulary words are <unk>.

    `context` may start with BOS tokens ("<s>"); shorter contexts are padded with them.
    """
    ids = [self._ids.get(w, _UNK_ID) for w in context]
    ids = ([_BOS_ID] * (self.order - 1) + ids)[len(ids):] if self.order > 1 else []
    return self._probability(tuple(ids), self._ids.get(word, _UNK_ID))

  def _probability(self, context: tuple, word: int) -> float:
    p = 1.0 / self.num_predicted
    for k in range(1, self.order + 1):
      history = context[len(context) - (k - 1):] if k > 1 else ()
      stats = self._contexts[k - 1].get(history)
      if stats is None:  # an unseen context has no longer seen extension either
        break
      total, types = stats
      count = self.counts[k - 1].get(history + (word,), 0)
      p = (max(count - self.discount, 0.0) + self.discount * types * p) / total
    return p

  def perplexity(self, text: str) -> float:
    """exp of the mean negative log probability of the document's tokens and its </s>."""
    ids = self.token_ids(text)
    n = self.order - 1
    log_probability = 0.0
    for i in range(n, len(ids)):
      log_probability += math.log(self._probability(tuple(ids[i - n:i]), ids[i]))
    return math.exp(-log_probability / (len(ids) - n))

  def save(self, path: str) -> None:
    """Writes the model to `path` (.npz of n-gram id arrays and counts, JSON settings); atomic replace."""
    arrays = {}
    for k, level in enumerate(self.counts, start=1):
      arrays[f"grams_{k}"] = np.array(list(level.keys()), np.int32).reshape(len(level), k)
      arrays[f"counts_{k}"] = np.array(list(level.values()), np.int64)
    quantiles = np.zeros(0) if self.reference_quantiles is None else self.reference_quantiles
    settings = {"kind": _NGRAM_KIND, "format_version": _FORMAT_VERSION, "order": self.order,
                "discount": self.discount, "vocab": self.vocab}
    _save_npz(path, settings=np.array(json.dumps(settings)), quantiles=np.asarray(quantiles, np.float64), **arrays)


def _save_npz(path: str, **arrays) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  temporary = f"{path}.tmp.{os.getpid()}"
  with open(temporary, "wb") as f:
    np.savez(f, **arrays)
  os.replace(temporary, path)


def _read_npz(path: str, kind: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(settings, arrays) of an .npz written by this module, checked to be of `kind`."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"perplexity model file not found: {path}")
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path} is not a perplexity model file: expected an .npz archive written by this project")
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {name: data[name] for name in data.files}
    settings = json.loads(str(arrays.pop("settings")))
  except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not a perplexity model file: {e}") from None
  if not isinstance(settings, dict) or settings.get("kind") != kind:
    found = settings.get("kind") if isinstance(settings, dict) else None
    raise ValueError(f"{path} is not a {kind} file (it says {found!r})")
  if settings.get("format_version") != _FORMAT_VERSION:
    raise ValueError(f"{path}: format version {settings.get('format_version')!r}, this code reads {_FORMAT_VERSION}")
  return settings, arrays


def train(texts: Iterable[str], order: int, discount: float) -> NGramModel:
  """Counts an interpolated Kneser-Ney model of `order` over the documents `texts`.

  Args:
    texts: training documents (each padded with its own boundary tokens).
    order: n-gram order, >= 1.
    discount: absolute discount, in (0, 1).

  Raises:
    ValueError: order or discount out of range, or no texts.
  """
  if order < 1:
    raise ValueError(f"perplexity.order must be >= 1, got {order}")
  if not 0.0 < discount < 1.0:
    raise ValueError(f"perplexity.discount must be in (0, 1), got {discount}")
  vocab = [UNK, EOS, BOS]
  ids = {word: i for i, word in enumerate(vocab)}
  highest: dict[tuple, int] = {}
  documents = 0
  for text in texts:
    documents += 1
    tokens = [_BOS_ID] * (order - 1)
    for word in words(text):
      if word not in ids:
        ids[word] = len(vocab)
        vocab.append(word)
      tokens.append(ids[word])
    tokens.append(_EOS_ID)
    for i in range(order - 1, len(tokens)):
      gram = tuple(tokens[i - order + 1:i + 1])
      highest[gram] = highest.get(gram, 0) + 1
  if not documents:
    raise ValueError("the n-gram model needs at least one training document")
  # Every lower-order occurrence is preceded by a token (the <s> padding guarantees it), so a
  # k-gram's continuation count is the number of distinct (k + 1)-grams it ends.
  counts = [highest]
  for _ in range(order - 1):
    lower: dict[tuple, int] = {}
    for gram in counts[0]:
      lower[gram[1:]] = lower.get(gram[1:], 0) + 1
    counts.insert(0, lower)
  return NGramModel(order, float(discount), vocab, counts)


def load(path: str) -> NGramModel:
  """The n-gram model saved at `path` by `NGramModel.save`.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: `path` is not an n-gram model file.
  """
  settings, arrays = _read_npz(path, _NGRAM_KIND)
  order = int(settings["order"])
  counts = []
  for k in range(1, order + 1):
    grams, values = arrays.get(f"grams_{k}"), arrays.get(f"counts_{k}")
    if grams is None or values is None or grams.shape != (len(values), k):
      raise ValueError(f"{path}: the {k}-gram arrays are missing or malformed")
    counts.append(dict(zip(map(tuple, grams.tolist()), values.tolist())))
  quantiles = arrays.get("quantiles")
  quantiles = quantiles if quantiles is not None and quantiles.size else None
  return NGramModel(order, float(settings["discount"]), list(settings["vocab"]), counts, quantiles)


def reference_quantiles(perplexities: Iterable[float]) -> np.ndarray:
  """float64 [101]: the perplexities at the levels QUANTILE_GRID."""
  values = np.asarray(list(perplexities), np.float64)
  if not values.size:
    raise ValueError("no reference perplexities to take quantiles of")
  return np.quantile(values, QUANTILE_GRID)


class CheckpointScorer:
  """Perplexities under the latest checkpoint and tokenizer of a run directory of this project.

  Loads `run_dir`/config.json, the tokenizer in `run_dir`/tokenizer and the train state of the
  latest step in `run_dir`/checkpoints (restored onto a mesh of this host's devices, laid out
  by the run's own mesh settings); only the parameters are kept.
  """

  def __init__(self, run_dir: str):
    # JAX and the model are imported only here: the n-gram path must not need them.
    import flax.linen as nn  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import optax  # pylint: disable=import-outside-toplevel
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    from data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
    from lm import checkpoint as checkpoint_lib  # pylint: disable=import-outside-toplevel
    from lm import sharding  # pylint: disable=import-outside-toplevel
    from lm import train as train_lib  # pylint: disable=import-outside-toplevel

    config_path = os.path.join(run_dir, "config.json")
    checkpoints = os.path.join(run_dir, "checkpoints")
    if not os.path.exists(config_path) or not os.path.isdir(checkpoints):
      raise FileNotFoundError(f"perplexity.run_dir: {run_dir!r} is not a run directory (needs config.json and "
                              "checkpoints/)")
    with open(config_path) as f:
      config = ml_collections.ConfigDict(json.load(f))
    if config.model.objective != "causal":
      raise ValueError(f"perplexity.run_dir: the model in {run_dir} has objective {config.model.objective!r}; "
                       "perplexity needs a causal language model")
    mesh = sharding.make_mesh(config.mesh)
    trainer = train_lib.build(config, mesh)
    checkpointer = checkpoint_lib.Checkpointer(checkpoints, config.checkpoint.every_steps,
                                               config.checkpoint.max_to_keep)
    self.step = checkpointer.latest_step()
    if self.step is None:
      raise FileNotFoundError(f"perplexity.run_dir: no checkpoint in {checkpoints}")
    # Only the state item: the data iterator's position is of no use for scoring.
    restored = checkpointer.manager.restore(
        self.step, args=ocp.args.Composite(state=ocp.args.StandardRestore(trainer.abstract_state)))
    checkpointer.close()
    self.params = restored["state"].params
    self.tokenizer = tokenizer_lib.load(os.path.join(run_dir, "tokenizer"))
    self.max_seq_len = int(config.model.max_seq_len)
    self.rows = sharding.data_parallel_size(mesh)
    self._put = lambda array: sharding.from_full_host_array(array, trainer.batch_sharding)

    def summed_losses(params, inputs, targets, segment_ids):
      positions = jnp.broadcast_to(jnp.arange(inputs.shape[1], dtype=jnp.int32), inputs.shape)
      logits = trainer.model.apply({"params": params}, inputs, segment_ids, positions)[0]
      mask = (segment_ids > 0).astype(jnp.float32)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
      return jnp.sum(loss * mask, axis=1), jnp.sum(mask, axis=1)

    jitted = jax.jit(summed_losses)

    def losses(*arrays):
      with jax.set_mesh(mesh), nn.logical_axis_rules(trainer.rules):
        return jitted(self.params, *arrays)

    self._losses = losses

  def perplexities(self, texts: Iterable[str]) -> np.ndarray:
    """float64 [len(texts)]: exp(mean next-token loss) of each `[BOS] + text + [EOS]`, truncated to max_seq_len."""
    texts = list(texts)
    result = np.zeros(len(texts), np.float64)
    for start in range(0, len(texts), self.rows):
      batch = texts[start:start + self.rows]
      ids = [([self.tokenizer.bos_id] + self.tokenizer.encode(t) + [self.tokenizer.eos_id])[:self.max_seq_len + 1]
             for t in batch]
      # Rows are padded to a power of two (>= 16) so that few shapes are compiled.
      width = min(self.max_seq_len, max(16, 1 << (max(len(r) for r in ids) - 2).bit_length()))
      inputs = np.full((self.rows, width), self.tokenizer.pad_id, np.int32)
      targets = np.zeros((self.rows, width), np.int32)
      segment_ids = np.zeros((self.rows, width), np.int32)
      for i, row in enumerate(ids):
        n = len(row) - 1
        inputs[i, :n], targets[i, :n], segment_ids[i, :n] = row[:-1], row[1:], 1
      sums, counts = self._losses(*(self._put(a) for a in (inputs, targets, segment_ids)))
      sums, counts = np.asarray(sums, np.float64), np.asarray(counts, np.float64)
      result[start:start + len(batch)] = np.exp(np.minimum(sums[:len(batch)] / counts[:len(batch)], 700.0))
    return result


def _check_config(config: ml_collections.ConfigDict) -> None:
  if config.model not in MODELS:
    raise ValueError(f"perplexity.model must be one of {', '.join(MODELS)}, got {config.model!r}")
  if not 0.0 <= config.low_quantile < config.high_quantile <= 1.0:
    raise ValueError(f"perplexity.low_quantile ({config.low_quantile}) and perplexity.high_quantile "
                     f"({config.high_quantile}) must satisfy 0 <= low < high <= 1")
  if config.model == "checkpoint" and not config.run_dir:
    raise ValueError("perplexity.run_dir must name a run directory when perplexity.model is 'checkpoint'")


class PerplexityFilter:
  """Drops documents whose perplexity is outside the configured quantiles of the reference documents'.

  Built from `config.perplexity`. Writes metadata["perplexity"]. Drop reasons
  "perplexity_high" (detail "5120 > 830") and "perplexity_low" (detail "3 < 12").
  """

  def __init__(self, config: ml_collections.ConfigDict):
    _check_config(config)
    path = config.model_path
    if not path:
      needs = "perplexity.reference" + (" and perplexity.run_dir" if config.model == "checkpoint" else "")
      raise ValueError(f"perplexity.model_path is empty: give a model file, or configure {needs} so that a run "
                       f"{'trains the n-gram model' if config.model == 'ngram' else 'scores the reference'} first")
    if not os.path.exists(path):
      raise FileNotFoundError(f"perplexity.model_path: file not found: {path}")
    self.mode = config.model
    self.run_dir = config.run_dir
    self._scorer = None
    if self.mode == "ngram":
      self._ngram = load(path)
      quantiles = self._ngram.reference_quantiles
      if quantiles is None:
        raise ValueError(f"perplexity.model_path: {path} holds no reference perplexity quantiles "
                         "(train it with ensure_model, which measures them on held-out reference documents)")
      self._checkpoint_step = None
    else:
      self._ngram = None
      settings, arrays = _read_npz(path, _CHECKPOINT_KIND)
      if os.path.abspath(settings["run_dir"]) != os.path.abspath(config.run_dir):
        raise ValueError(f"perplexity.model_path: {path} holds quantiles of run {settings['run_dir']!r}, "
                         f"not of perplexity.run_dir {config.run_dir!r}")
      quantiles = arrays["quantiles"]
      self._checkpoint_step = int(settings["step"])
    self.low_limit = None if config.low_quantile <= 0.0 else float(np.interp(config.low_quantile, QUANTILE_GRID,
                                                                                quantiles))
    self.high_limit = None if config.high_quantile >= 1.0 else float(np.interp(config.high_quantile, QUANTILE_GRID,
                                                                                  quantiles))

  def __getstate__(self) -> dict:
    state = dict(self.__dict__)
    state["_scorer"] = None  # device arrays do not travel; a worker restores the checkpoint itself
    return state

  def perplexity(self, text: str) -> float:
    """The document's perplexity under the configured model."""
    if self._ngram is not None:
      return self._ngram.perplexity(text)
    if self._scorer is None:
      self._scorer = CheckpointScorer(self.run_dir)
      if self._scorer.step != self._checkpoint_step:
        raise ValueError(f"perplexity.model_path: its quantiles were measured with checkpoint step "
                         f"{self._checkpoint_step} of {self.run_dir}, whose latest is now {self._scorer.step}; "
                         "delete the file so that the next run measures them again")
    return float(self._scorer.perplexities([text])[0])

  def __call__(self, doc: Document) -> Document | Drop:
    ppl = self.perplexity(doc.text)
    if self.high_limit is not None and ppl > self.high_limit:
      return Drop("perplexity_high", f"{ppl:.0f} > {self.high_limit:.0f}")
    if self.low_limit is not None and ppl < self.low_limit:
      return Drop("perplexity_low", f"{ppl:.0f} < {self.low_limit:.0f}")
    return dataclasses.replace(doc, metadata={**doc.metadata, "perplexity": round(ppl, 2)})


def ensure_model(stage_config: ml_collections.ConfigDict, read_documents: Callable[[list], Iterable[Document]],
                 default_path: str, log: Callable[[str], None], seed: int = 0) -> ml_collections.ConfigDict:
  """`config.perplexity` with a usable model_path: the n-gram model is trained (model = ngram), or the
  reference quantiles are measured with the run's checkpoint (model = checkpoint), when the file is missing.

  Args:
    stage_config: `config.perplexity`.
    read_documents: reads a list of `source(...)` specs and yields their Documents.
    default_path: where the file is written when `model_path` is empty.
    log: receives one line describing what was trained or measured.
    seed: seed of the held-out split of the reference documents.

  Returns:
    `stage_config` itself when model_path names an existing file; else a copy whose model_path
    is the file just written.

  Raises:
    ValueError: no model file and no `reference` corpora, no document held out, or bad settings.
  """
  _check_config(stage_config)
  if stage_config.model_path and os.path.exists(stage_config.model_path):
    return stage_config
  if not stage_config.reference:
    where = (f"perplexity.model_path {stage_config.model_path!r} does not exist" if stage_config.model_path
             else "perplexity.model_path is empty")
    raise ValueError(f"{where} and perplexity.reference is not configured: give a model file or reference corpora")
  path = stage_config.model_path or default_path
  if stage_config.model == "ngram":
    if not 0.0 < stage_config.heldout_fraction < 1.0:
      raise ValueError(f"perplexity.heldout_fraction must be in (0, 1), got {stage_config.heldout_fraction}")
    kept, heldout = [], []
    for doc in read_documents(stage_config.reference):
      (heldout if corpus.in_validation(doc.id, stage_config.heldout_fraction, seed) else kept).append(doc.text)
    if not kept or not heldout:
      raise ValueError(f"perplexity.reference gave {len(kept)} training and {len(heldout)} held-out documents "
                       f"(perplexity.heldout_fraction = {stage_config.heldout_fraction}); both must be non-empty")
    model = train(kept, stage_config.order, stage_config.discount)
    model.reference_quantiles = reference_quantiles(model.perplexity(text) for text in heldout)
    model.save(path)
    quantiles = model.reference_quantiles
    log(f"perplexity: trained a {stage_config.order}-gram model on {len(kept)} reference documents "
        f"(vocabulary of {model.num_predicted} words); held-out perplexity on {len(heldout)} documents: median "
        f"{quantiles[50]:.0f}, 1%..99% {quantiles[1]:.0f}..{quantiles[99]:.0f}; saved to {path}")
  else:
    scorer = CheckpointScorer(stage_config.run_dir)
    texts = [doc.text for doc in read_documents(stage_config.reference)]
    if not texts:
      raise ValueError("perplexity.reference gave no documents")
    quantiles = reference_quantiles(scorer.perplexities(texts))
    settings = {"kind": _CHECKPOINT_KIND, "format_version": _FORMAT_VERSION,
                "run_dir": os.path.abspath(stage_config.run_dir), "step": scorer.step}
    _save_npz(path, settings=np.array(json.dumps(settings)), quantiles=quantiles)
    log(f"perplexity: scored {len(texts)} reference documents with step {scorer.step} of {stage_config.run_dir}: "
        f"median {quantiles[50]:.1f}, 1%..99% {quantiles[1]:.1f}..{quantiles[99]:.1f}; saved to {path}")
  updated = stage_config.copy_and_resolve_references()
  updated.model_path = path
  return updated
