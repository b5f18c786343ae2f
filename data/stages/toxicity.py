"""Toxicity filter: drops documents dense in listed offensive words, or scored toxic by a classifier.

Word-list filtering follows the "bad words" filter of C4 (Raffel et al. 2020, section 2.2),
which drops a page containing any word of a list of offensive words. Dodge et al. (2021,
"Documenting Large Webtext Corpora") found that this any-word rule removes benign text
(medical, LGBTQ+ and minority-dialect pages) disproportionately, so here a document is
dropped only when at least `toxicity.min_matches` listed words / phrases occur *and* they
make up more than `toxicity.max_word_fraction` of its words (0.5 % by default).

Matching is whole-word and case-insensitive: a listed word inside a longer word does not
count (the "Scunthorpe problem"), and the words of a listed phrase may be separated by any
whitespace. Words are ``\\w+`` runs. The list file holds one word or phrase per line, ``#``
starts a comment; ``''`` means no list.

Optionally a classifier also scores every document, as Dolma (Soldaini et al. 2024) does with
fastText models trained on toxic / non-toxic comments: here `data.stages.classifier`, a hashed
word n-gram logistic model (positive class = toxic); `ensure_model` trains it
at the start of a run from the `toxicity.toxic` and `toxicity.clean` corpora when no model
file exists yet.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Iterable

import ml_collections

from data.corpus import Document
from data.stages import Drop
from data.stages import classifier as classifier_lib
from data.stages.url_filter import load_list

_WORD = re.compile(r"\w+")
# Settings of the optional toxic / clean classifier: those of the quality classifier's defaults
# (`config.quality_classifier`), which suit document-level classification of web text.
CLASSIFIER_NGRAM_MAX = 2
CLASSIFIER_NUM_FEATURES = 2**20
CLASSIFIER_EPOCHS = 5


def phrase_pattern(phrases: Iterable[str]) -> re.Pattern | None:
  """A case-insensitive pattern matching any of `phrases` as whole words, or None for no phrases.

  Args:
    phrases: words or multi-word phrases; the words of a phrase match across any whitespace.
  """
  alternatives = sorted({r"\s+".join(map(re.escape, p.split())) for p in phrases if p.split()}, key=len,
                        reverse=True)  # longest first, so a phrase wins over a listed word it starts with
  if not alternatives:
    return None
  return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


class ToxicityFilter:
  """Drops documents with too many listed offensive words, or a toxic classifier score.

  Args:
    config: `config.toxicity`: words_file, max_word_fraction, min_matches, classifier_path,
      classifier_max_score (see configs/curate/base.py).

  Drop reasons: "toxic_words" (detail "3 matches, 0.012 of words") and "toxic_classifier"
  (detail "p=0.93").
  """

  def __init__(self, config: ml_collections.ConfigDict):
    if not 0.0 <= config.max_word_fraction <= 1.0:
      raise ValueError(f"toxicity.max_word_fraction must be in [0, 1], got {config.max_word_fraction}")
    if int(config.min_matches) != config.min_matches or config.min_matches < 0:
      raise ValueError(f"toxicity.min_matches must be an integer >= 0, got {config.min_matches}")
    if not 0.0 <= config.classifier_max_score <= 1.0:
      raise ValueError(f"toxicity.classifier_max_score must be in [0, 1], got {config.classifier_max_score}")
    self.max_word_fraction = float(config.max_word_fraction)
    self.min_matches = int(config.min_matches)
    self.classifier_max_score = float(config.classifier_max_score)
    self.words = load_list(config.words_file, "toxicity.words_file")
    self._pattern = phrase_pattern(self.words)
    self.classifier = None
    if config.classifier_path:
      if not os.path.exists(config.classifier_path):
        raise FileNotFoundError(f"toxicity.classifier_path: {config.classifier_path} (classifier file not found; "
                                "expected an .npz written by data.stages.classifier, or leave it empty and configure "
                                "toxicity.toxic and toxicity.clean so that a run trains one)")
      self.classifier = classifier_lib.load(config.classifier_path)

  def count_matches(self, text: str) -> int:
    """Number of occurrences of listed words / phrases in `text` (whole words, any case)."""
    return 0 if self._pattern is None else sum(1 for _ in self._pattern.finditer(text))

  def __call__(self, doc: Document) -> Document | Drop:
    """`doc` unchanged, or a Drop when the word list or the classifier finds it toxic."""
    matches = self.count_matches(doc.text)
    if matches and matches >= self.min_matches:
      words = sum(1 for _ in _WORD.finditer(doc.text))
      fraction = matches / max(words, 1)
      if fraction > self.max_word_fraction:
        return Drop("toxic_words", f"{matches} matches, {fraction:.3f} of words")
    if self.classifier is not None:
      probability = self.classifier.score(doc.text)
      if probability > self.classifier_max_score:
        return Drop("toxic_classifier", f"p={probability:.2f}")
    return doc


def ensure_model(stage_config: ml_collections.ConfigDict, read_documents: Callable[[list], Iterable[Document]],
                 default_path: str, log: Callable[[str], None], seed: int = 0) -> ml_collections.ConfigDict:
  """`config.toxicity` with its classifier trained when the toxic / clean corpora ask for one.

  Args:
    stage_config: `config.toxicity`.
    read_documents: reads a list of `source(...)` specs and yields their Documents.
    default_path: where the trained model is written when `classifier_path` is empty.
    log: receives one line describing the training (documents, held-out accuracy, path).
    seed: seed of the held-out split and of the SGD shuffling.

  Returns:
    `stage_config` itself when classifier_path names an existing file, or when it is empty and
    no training corpora are configured (the classifier is off); else a copy whose classifier_path
    is the freshly trained model.

  Raises:
    ValueError: only one of `toxic` / `clean` is configured, or a corpus gave no documents.
    FileNotFoundError: classifier_path names a missing file and there are no corpora to train it from.
  """
  path = stage_config.get("classifier_path", "")
  if path and os.path.exists(path):
    return stage_config
  toxic_specs, clean_specs = stage_config.get("toxic", []), stage_config.get("clean", [])
  if not toxic_specs and not clean_specs:
    if path:
      raise FileNotFoundError(f"toxicity.classifier_path: {path} (classifier file not found), and toxicity.toxic / "
                              "toxicity.clean are not configured to train one")
    return stage_config
  if not toxic_specs or not clean_specs:
    missing = "toxicity.clean" if toxic_specs else "toxicity.toxic"
    raise ValueError(f"{missing} is empty: training the toxicity classifier needs both toxicity.toxic and "
                     "toxicity.clean corpora")
  path = path or default_path
  summary = classifier_lib.train_and_save(
      read_documents(toxic_specs), read_documents(clean_specs), keys=("toxicity.toxic", "toxicity.clean"),
      labels=("toxic", "clean"), path=path, ngram_max=CLASSIFIER_NGRAM_MAX, num_features=CLASSIFIER_NUM_FEATURES,
      epochs=CLASSIFIER_EPOCHS, seed=seed, threshold=float(stage_config.get("classifier_max_score", 0.5)))
  log(f"toxicity: {summary}")
  updated = stage_config.copy_and_resolve_references()
  updated.classifier_path = path
  return updated
