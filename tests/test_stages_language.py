"""Language identification stage: accuracy on the multilingual fixture, keep / drop decisions, settings."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import re

import pytest

from configs.curate import base
from data.corpus import Document
from data.stages import Drop
from data.stages.language import LanguageFilter

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "languages")
# Mixed English / German, English the larger part: lingua's top language is English, but unsure.
CODE_SWITCHED = "We went to the Markt and bought Brot und Käse for the picnic."
# Mostly English with a French phrase: English, fairly sure.
MOSTLY_ENGLISH = "I told him: c'est la vie, mon ami, and we walked home together."


def fixture_paragraphs() -> dict[str, list[str]]:
  """ISO 639-1 code -> the paragraphs of tests/fixtures/languages/<code>.txt (blank-line separated)."""
  paragraphs = {}
  for name in sorted(os.listdir(FIXTURES)):
    if name.endswith(".txt"):
      with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        paragraphs[name[:-4]] = [p.strip() for p in re.split(r"\n\s*\n", f.read()) if p.strip()]
  return paragraphs


def language_config(**changes):
  config = base.get_config()
  for key, value in changes.items():
    config.language[key] = value
  return config.language


@pytest.fixture(scope="module")
def english_filter():
  return LanguageFilter(language_config())


def test_fixture_has_enough_languages_and_paragraphs():
  paragraphs = fixture_paragraphs()
  assert {"en", "de", "fr", "es", "it", "pt", "nl", "pl"} <= set(paragraphs)
  for code, texts in paragraphs.items():
    assert len(texts) >= 25, code
    assert all(len(t.split()) >= 15 for t in texts), code


def test_detector_accuracy_on_fixture(english_filter):
  paragraphs = fixture_paragraphs()
  assert set(paragraphs) <= set(english_filter.candidates)
  correct = total = 0
  for code, texts in paragraphs.items():
    hits = sum(english_filter.detect(text)[0] == code for text in texts)
    print(f"{code}: {hits}/{len(texts)} = {hits / len(texts):.3f}")
    assert hits / len(texts) >= 0.9, code
    correct, total = correct + hits, total + len(texts)
  print(f"all: {correct}/{total} = {correct / total:.3f}")
  assert correct / total >= 0.95


def test_keeps_english_and_drops_other_languages(english_filter):
  paragraphs = fixture_paragraphs()
  for text in paragraphs["en"][:5]:
    doc = Document(id="en", source="web", text=text, metadata={"kept": 1})
    out = english_filter(doc)
    assert isinstance(out, Document)
    assert out.metadata["language"] == "en"
    assert out.metadata["language_score"] >= 0.65
    assert out.metadata["kept"] == 1 and out.text == text
  for code in ("de", "fr", "pl", "ru"):
    out = english_filter(Document(id=code, source="web", text=paragraphs[code][0]))
    assert isinstance(out, Drop)
    assert out.reason == "language"
    detected, score = out.detail.split()
    assert detected == code and float(score) > 0.9


def test_min_score_drops_uncertain_text():
  default = LanguageFilter(language_config())
  lenient = LanguageFilter(language_config(min_score=0.3))
  strict = LanguageFilter(language_config(min_score=0.9))
  code, score = default.detect(CODE_SWITCHED)
  assert code == "en" and 0.3 < score < 0.65
  out = default(Document(id="a", source="web", text=CODE_SWITCHED))
  assert isinstance(out, Drop) and out.reason == "language_score" and out.detail.startswith("en ")
  assert isinstance(lenient(Document(id="a", source="web", text=CODE_SWITCHED)), Document)

  code, score = default.detect(MOSTLY_ENGLISH)
  assert code == "en" and 0.65 <= score < 0.9
  assert isinstance(default(Document(id="b", source="web", text=MOSTLY_ENGLISH)), Document)
  out = strict(Document(id="b", source="web", text=MOSTLY_ENGLISH))
  assert isinstance(out, Drop) and out.reason == "language_score"


def test_max_chars_limits_what_is_scored():
  paragraphs = fixture_paragraphs()
  english, german = paragraphs["en"][0], " ".join(paragraphs["de"])
  text = english + "\n\n" + german
  short = LanguageFilter(language_config(max_chars=len(english)))
  long = LanguageFilter(language_config(max_chars=len(text)))
  assert short.detect(text)[0] == "en"
  assert long.detect(text)[0] == "de"


def test_empty_and_letterless_text_are_dropped(english_filter):
  assert english_filter(Document(id="e", source="web", text="  \n ")) == Drop("language", "no text")
  out = english_filter(Document(id="d", source="web", text="12345 678 -- 90"))
  assert isinstance(out, Drop) and out.reason == "language"


def test_low_accuracy_mode_still_classifies_paragraphs():
  fast = LanguageFilter(language_config(low_accuracy=True))
  paragraphs = fixture_paragraphs()
  for code in ("en", "de", "es"):
    assert all(fast.detect(text)[0] == code for text in paragraphs[code][:10])


def test_bad_settings_name_the_key():
  with pytest.raises(ValueError, match=r"language\.candidates.*'xx'"):
    LanguageFilter(language_config(candidates=("en", "xx")))
  with pytest.raises(ValueError, match=r"language\.keep"):
    LanguageFilter(language_config(keep=("fi",)))
  with pytest.raises(ValueError, match=r"language\.min_score"):
    LanguageFilter(language_config(min_score=1.5))


def test_stage_pickles_and_runs_in_a_fresh_worker_process(english_filter):
  german = fixture_paragraphs()["de"][1]
  restored = pickle.loads(pickle.dumps(english_filter))
  doc = Document(id="x", source="web", text=german)
  assert restored(doc) == english_filter(doc)
  # A spawned process has no detector yet: the unpickled stage must build its own.
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
    out = pool.submit(english_filter, doc).result(timeout=120)
  assert isinstance(out, Drop) and out.reason == "language" and out.detail.startswith("de ")
