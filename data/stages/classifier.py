"""Quality classifier filter: a hashed n-gram linear classifier of reference text versus web text.

GPT-3 (Brown et al. 2020, appendix A) filtered Common Crawl with a logistic-regression
classifier trained to tell curated reference text (positive class) from raw web pages
(negative class), and the Pile (Gao et al. 2020) did the same with fastText; documents the
classifier places far from the reference are dropped. The classifier here follows fastText
(Joulin et al. 2017, "Bag of Tricks for Efficient Text Classification"): word n-grams
hashed into a fixed feature space and a linear model with a logistic output, trained by
stochastic gradient descent for a few epochs. It is built from scikit-learn's
`HashingVectorizer` (murmurhash3 of word 1..n-grams, L2-normalised term counts) and
`SGDClassifier` with the logistic loss.

A trained `TextClassifier` is saved as an .npz file holding only numbers and a JSON string:
the nonzero weights (indices and values), the intercept and the vectorizer settings. The
hashing vectorizer is stateless, so these fully determine the scores; nothing is pickled.

`ensure_model` trains the model at the start of a run when `quality_classifier.model_path`
is missing and both training corpora are configured. The toxicity filter trains its own
classifier with the same `train` / `load` functions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from typing import Callable, Iterable

import ml_collections
import numpy as np
from scipy.special import expit

from data import corpus
from data.corpus import Document
from data.stages import Drop

_KIND = "text_classifier"
_FORMAT_VERSION = 1
# L2 penalty of the SGD trainer. Measured on a harder proxy task than web filtering (pydoc topic paragraphs
# versus standard-library docstring paragraphs, 80/20 split, 2-grams, 2**20 features, 5 epochs): held-out
# accuracy 0.904 / 0.919 / 0.925 / 0.916 / 0.888 for alpha 1e-4 / 3e-5 / 1e-5 / 1e-6 / 1e-7, in 0.1 s;
# LogisticRegression (lbfgs) reached 0.926 at best but took 5 s, so SGD is used.
_ALPHA = 1e-5
HELDOUT_FRACTION = 0.1  # training documents held out (by a seeded hash of the id) to report accuracy


@dataclasses.dataclass(eq=False)
class TextClassifier:
  """A linear classifier over hashed word n-grams; `score` is the probability of the positive class.

  Attributes:
    ngram_max: word n-grams of lengths 1..ngram_max are the features.
    num_features: size of the hashed feature space.
    indices: int64 [nonzero] feature indices with a nonzero weight, ascending.
    values: float64 [nonzero] their weights.
    intercept: the bias of the logit.
  """

  ngram_max: int
  num_features: int
  indices: np.ndarray
  values: np.ndarray
  intercept: float
  _dense: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
  _vectorizer: object = dataclasses.field(default=None, repr=False, compare=False)

  def __getstate__(self) -> dict:
    # The dense weight vector (8 bytes per hashed feature) is rebuilt where it is used rather than shipped.
    state = dict(self.__dict__)
    state["_dense"] = None
    state["_vectorizer"] = None
    return state

  @property
  def settings(self) -> dict:
    """The vectorizer settings, as saved in the model file."""
    return {"kind": _KIND, "format_version": _FORMAT_VERSION, "ngram_max": self.ngram_max,
            "num_features": self.num_features, "alternate_sign": False, "norm": "l2", "lowercase": True}

  def _features(self, texts: list[str]):
    if self._vectorizer is None:
      self._vectorizer = _vectorizer(self.ngram_max, self.num_features)
    return self._vectorizer.transform(texts)

  def _weights(self) -> np.ndarray:
    if self._dense is None:
      dense = np.zeros(self.num_features, np.float64)
      dense[self.indices] = self.values
      self._dense = dense
    return self._dense

  def score_many(self, texts: Iterable[str]) -> np.ndarray:
    """float64 [len(texts)] probabilities of the positive class."""
    texts = list(texts)
    if not texts:
      return np.zeros(0, np.float64)
    logits = self._features(texts) @ self._weights() + self.intercept
    return expit(np.asarray(logits, np.float64))  # the logistic function, without overflow warnings

  def score(self, text: str) -> float:
    """Probability that `text` belongs to the positive class."""
    return float(self.score_many([text])[0])

  def save(self, path: str) -> None:
    """Writes the model to `path` (.npz: weights, intercept, JSON settings); atomic replace."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.tmp.{os.getpid()}"
    with open(temporary, "wb") as f:
      np.savez(f, indices=self.indices.astype(np.int64), values=self.values.astype(np.float64),
               intercept=np.float64(self.intercept), settings=np.array(json.dumps(self.settings)))
    os.replace(temporary, path)


def _vectorizer(ngram_max: int, num_features: int):
  from sklearn.feature_extraction.text import HashingVectorizer  # pylint: disable=import-outside-toplevel
  return HashingVectorizer(ngram_range=(1, ngram_max), n_features=num_features, alternate_sign=False, norm="l2",
                           lowercase=True)


def train(positive_texts: Iterable[str], negative_texts: Iterable[str], *, ngram_max: int, num_features: int,
          epochs: int, seed: int) -> TextClassifier:
  """Trains a classifier that gives `positive_texts` a high score and `negative_texts` a low one.

  Args:
    positive_texts: texts of the positive class (label 1).
    negative_texts: texts of the negative class (label 0).
    ngram_max: longest word n-gram used as a feature (>= 1).
    num_features: hashed feature space size (>= 2).
    epochs: SGD passes over the shuffled training set (>= 1).
    seed: seed of the shuffling, so training is reproducible.

  The two classes are weighted inversely to their sizes, so an unbalanced training set does
  not move the 0.5 threshold towards the larger class.

  Raises:
    ValueError: a setting is out of range or a class has no texts.
  """
  from sklearn.linear_model import SGDClassifier  # pylint: disable=import-outside-toplevel

  if ngram_max < 1:
    raise ValueError(f"ngram_max must be >= 1, got {ngram_max}")
  if num_features < 2:
    raise ValueError(f"num_features must be >= 2, got {num_features}")
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1, got {epochs}")
  positive, negative = list(positive_texts), list(negative_texts)
  if not positive or not negative:
    raise ValueError(f"training needs texts of both classes; got {len(positive)} positive and {len(negative)} negative")
  features = _vectorizer(ngram_max, num_features).transform(positive + negative)
  labels = np.concatenate([np.ones(len(positive), np.int64), np.zeros(len(negative), np.int64)])
  model = SGDClassifier(loss="log_loss", alpha=_ALPHA, max_iter=epochs, tol=None, shuffle=True, random_state=seed,
                        class_weight="balanced")
  model.fit(features, labels)
  weights = model.coef_[0]
  indices = np.flatnonzero(weights)
  return TextClassifier(ngram_max=ngram_max, num_features=num_features, indices=indices.astype(np.int64),
                        values=weights[indices].astype(np.float64), intercept=float(model.intercept_[0]))


def load(path: str) -> TextClassifier:
  """The classifier saved at `path` by `TextClassifier.save`.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: `path` is not a classifier file written by `save`.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"classifier file not found: {path}")
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path} is not a text classifier file: expected an .npz archive written by TextClassifier.save")
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {name: data[name] for name in data.files}
    settings = json.loads(str(arrays["settings"])) if "settings" in arrays else None
  except (OSError, ValueError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not a text classifier file (.npz written by TextClassifier.save): {e}") from None
  if not isinstance(settings, dict) or settings.get("kind") != _KIND:
    found = settings.get("kind") if isinstance(settings, dict) else None
    raise ValueError(f"{path} is not a text classifier file (its settings say kind {found!r})")
  if settings.get("format_version") != _FORMAT_VERSION:
    raise ValueError(f"{path}: text classifier format version {settings.get('format_version')!r}, "
                     f"this code reads version {_FORMAT_VERSION}")
  if any(name not in arrays for name in ("indices", "values", "intercept")):
    raise ValueError(f"{path}: text classifier file without its indices / values / intercept arrays")
  indices, values, intercept = arrays["indices"], arrays["values"], float(arrays["intercept"])
  num_features = int(settings["num_features"])
  if indices.shape != values.shape or indices.ndim != 1 or (indices.size and (indices.min() < 0 or
                                                                               indices.max() >= num_features)):
    raise ValueError(f"{path}: weight indices and values are inconsistent with {num_features} features")
  return TextClassifier(ngram_max=int(settings["ngram_max"]), num_features=num_features,
                        indices=indices.astype(np.int64), values=values.astype(np.float64), intercept=intercept)


class QualityClassifierFilter:
  """Scores each document with the quality classifier; drops those below `min_score`.

  Built from `config.quality_classifier`. Writes metadata["quality_score"] (the probability of
  the reference class). Drop reason "quality_score", detail "0.12 < 0.5".
  """

  def __init__(self, config: ml_collections.ConfigDict):
    path = config.model_path
    if not path:
      raise ValueError("quality_classifier.model_path is empty: give a trained classifier (.npz), or configure "
                       "quality_classifier.reference and quality_classifier.web so that a run trains one first")
    if not os.path.exists(path):
      raise FileNotFoundError(f"quality_classifier.model_path: classifier file not found: {path}")
    if not 0.0 <= config.min_score <= 1.0:
      raise ValueError(f"quality_classifier.min_score must be in [0, 1], got {config.min_score}")
    self.min_score = float(config.min_score)
    self.classifier = load(path)

  def __call__(self, doc: Document) -> Document | Drop:
    score = self.classifier.score(doc.text)
    if score < self.min_score:
      return Drop("quality_score", f"{score:.2f} < {self.min_score:g}")
    return dataclasses.replace(doc, metadata={**doc.metadata, "quality_score": round(score, 4)})


def split_heldout(documents: Iterable[Document], fraction: float, seed: int) -> tuple[list[str], list[str]]:
  """(training texts, held-out texts) of `documents`, split by a seeded hash of the document id."""
  kept, heldout = [], []
  for doc in documents:
    (heldout if corpus.in_validation(doc.id, fraction, seed) else kept).append(doc.text)
  return kept, heldout


def train_and_save(positive_docs: Iterable[Document], negative_docs: Iterable[Document], *, keys: tuple[str, str],
                   labels: tuple[str, str], path: str, ngram_max: int, num_features: int, epochs: int, seed: int,
                   threshold: float) -> str:
  """Trains a classifier on two corpora, 10% of each held out by id, and saves it to `path`.

  Args:
    positive_docs / negative_docs: the training documents of each class.
    keys: the config keys of the two corpora, named when one gives no documents.
    labels: names of the two classes in the returned summary.
    threshold: a held-out document counts as right when its score is above this for the positive class
      (at or below for the negative), i.e. the decision the filter using the model will take.

  Returns:
    One line: documents per class, held-out accuracy, where the model was saved.
  """
  positive, positive_heldout = split_heldout(positive_docs, HELDOUT_FRACTION, seed)
  negative, negative_heldout = split_heldout(negative_docs, HELDOUT_FRACTION, seed)
  if not positive or not negative:
    raise ValueError(f"training needs documents of both classes; {keys[0]} gave {len(positive)} and {keys[1]} gave "
                     f"{len(negative)} (after holding out {HELDOUT_FRACTION:.0%})")
  classifier = train(positive, negative, ngram_max=ngram_max, num_features=num_features, epochs=epochs, seed=seed)
  classifier.save(path)
  heldout = len(positive_heldout) + len(negative_heldout)
  if heldout:
    correct = (int(np.sum(classifier.score_many(positive_heldout) > threshold))
               + int(np.sum(classifier.score_many(negative_heldout) <= threshold)))
    accuracy = f"held-out accuracy {correct / heldout:.3f} on {heldout} documents"
  else:
    accuracy = "no documents held out"
  return (f"trained on {len(positive) + len(negative)} documents ({len(positive)} {labels[0]}, {len(negative)} "
          f"{labels[1]}); {accuracy}; saved to {path}")


def ensure_model(stage_config: ml_collections.ConfigDict, read_documents: Callable[[list], Iterable[Document]],
                 default_path: str, log: Callable[[str], None], seed: int = 0) -> ml_collections.ConfigDict:
  """`config.quality_classifier` with a usable model_path, training the classifier when it is missing.

  Args:
    stage_config: `config.quality_classifier`.
    read_documents: reads a list of `source(...)` specs and yields their Documents.
    default_path: where the trained model is written when `model_path` is empty.
    log: receives one line describing the training (documents, held-out accuracy, path).
    seed: seed of the held-out split and of the SGD shuffling.

  Returns:
    `stage_config` itself when model_path names an existing file; else a copy whose model_path
    is the freshly trained model.

  Raises:
    ValueError: no model file and `reference` / `web` not both configured, or bad settings.
  """
  if stage_config.model_path and os.path.exists(stage_config.model_path):
    return stage_config
  if not stage_config.reference or not stage_config.web:
    where = (f"quality_classifier.model_path {stage_config.model_path!r} does not exist" if stage_config.model_path
             else "quality_classifier.model_path is empty")
    raise ValueError(f"{where}, and quality_classifier.reference and quality_classifier.web are not both configured: "
                     "give a trained model or both training corpora")
  for key, minimum in (("ngram_max", 1), ("num_features", 2), ("epochs", 1)):
    if stage_config[key] < minimum:
      raise ValueError(f"quality_classifier.{key} must be >= {minimum}, got {stage_config[key]}")
  path = stage_config.model_path or default_path
  summary = train_and_save(read_documents(stage_config.reference), read_documents(stage_config.web),
                           keys=("quality_classifier.reference", "quality_classifier.web"), labels=("reference", "web"),
                           path=path, ngram_max=stage_config.ngram_max, num_features=stage_config.num_features,
                           epochs=stage_config.epochs, seed=seed, threshold=0.5)
  log(f"quality_classifier: {summary}")
  updated = stage_config.copy_and_resolve_references()
  updated.model_path = path
  return updated
