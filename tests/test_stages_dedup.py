"""Exact, fuzzy (MinHash + LSH) and substring (suffix array) deduplication stages."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from configs.curate import base
from data.corpus import Document
from data.stages import Drop
from data.stages import exact_dedup
from data.stages import fuzzy_dedup
from data.stages import substring_dedup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _doc(doc_id: str, text: str) -> Document:
  return Document(id=doc_id, source="test", text=text)


def _random_words(rng: np.random.Generator, count: int, prefix: str = "w") -> list[str]:
  """Words from a vocabulary of 10^9, so that shingles of different documents do not collide."""
  return [f"{prefix}{x}" for x in rng.integers(0, 10**9, count)]


def _mutated(rng: np.random.Generator, words: list[str], fraction: float) -> list[str]:
  """`words` with each word replaced by a fresh one with probability `fraction`."""
  out = list(words)
  for i in np.flatnonzero(rng.random(len(words)) < fraction):
    out[i] = f"n{rng.integers(0, 10**9)}"
  return out


def _shingle_jaccard(words_a: list[str], words_b: list[str], width: int = 5) -> float:
  shingles_a = {tuple(words_a[i:i + width]) for i in range(len(words_a) - width + 1)}
  shingles_b = {tuple(words_b[i:i + width]) for i in range(len(words_b) - width + 1)}
  return len(shingles_a & shingles_b) / len(shingles_a | shingles_b)


def _shuffled(items: list, seed: int) -> list:
  items = list(items)
  random.Random(seed).shuffle(items)
  return items


# ----------------------------------------------------------------------------------------- exact


def test_exact_dedup_drops_normalised_copies_and_keeps_smallest_id():
  stage = exact_dedup.ExactDedup(base.get_config().exact_dedup)
  docs = [
      _doc("c", "Hello, World! This is   a test."),
      _doc("a", "hello world this is a test"),
      _doc("d", "HELLO WORLD\n\nthis is a test!!!"),
      _doc("b", "Hello world, this is another test."),
      _doc("e", "Hello world, this is another test."),
      _doc("f", "A different document entirely."),
  ]
  decisions = stage.resolve((d.id, stage.prepare(d)) for d in docs)
  assert decisions == {"c": "a", "d": "a", "e": "b"}
  results = {d.id: stage.apply(d, decisions.get(d.id)) for d in docs}
  assert results["c"] == Drop("exact_duplicate", detail="of a")
  assert results["a"] is docs[1] and results["b"] is docs[3] and results["f"] is docs[5]
  assert stage.resolve(_shuffled([(d.id, stage.prepare(d)) for d in docs], 1)) == decisions


def test_exact_dedup_normalisation_follows_config():
  config = base.get_config()
  config.exact_dedup.strip_punctuation = False
  stage = exact_dedup.ExactDedup(config.exact_dedup)
  docs = [_doc("a", "hello world"), _doc("b", "Hello, world"), _doc("c", "HELLO  world")]
  assert stage.resolve((d.id, stage.prepare(d)) for d in docs) == {"c": "a"}
  config.exact_dedup.lowercase = False
  stage = exact_dedup.ExactDedup(config.exact_dedup)
  assert stage.resolve((d.id, stage.prepare(d)) for d in docs) == {}


# ----------------------------------------------------------------------------------------- fuzzy


def test_token_spans_match_python_re_on_unicode_text():
  alphabet = ("abc XYZ_09 ,.;!?\n\t\u00a0ÄöüßÉ İ ǅ e\u0301 中文字 ٣٤ ½ ² 🙂👍🏽 𝔘𝔫𝔦 \u2028 \u200b — “q” …\x00")
  rng = random.Random(0)
  for _ in range(200):
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
    for pattern, punctuation in ((r"\w+", False), (r"\w+|[^\w\s]", True)):
      starts, ends, _ = fuzzy_dedup.token_spans(text, punctuation)
      assert list(zip(starts.tolist(), ends.tolist())) == [m.span() for m in re.finditer(pattern, text)], text
    assert np.array_equal(fuzzy_dedup.signature(text), fuzzy_dedup.signature(fuzzy_dedup.words_of(text)))


def test_signatures_are_deterministic_and_short_texts_are_one_shingle():
  sig = fuzzy_dedup.signature("The quick brown fox jumps over the lazy dog", 64, seed=3)
  assert sig.dtype == np.uint32 and sig.shape == (64,)
  assert np.array_equal(sig, fuzzy_dedup.signature("the QUICK brown fox, jumps over the lazy dog!", 64, seed=3))
  assert not np.array_equal(sig, fuzzy_dedup.signature("The quick brown fox jumps over the lazy dog", 64, seed=4))
  # A word hashes the same in a list and in a text, whatever its case.
  assert fuzzy_dedup.word_hashes(["dedup"]).tolist() == fuzzy_dedup.word_hashes("DEDUP").tolist()
  assert fuzzy_dedup.word_hashes(["ab", "ba", "ab"]).tolist()[0] == fuzzy_dedup.word_hashes("ab ba")[0]
  three = fuzzy_dedup.signature("only three words", 32)
  assert np.count_nonzero(three == np.uint32(0xFFFFFFFF)) == 0
  assert fuzzy_dedup.estimate_jaccard(three, fuzzy_dedup.signature("Only three words.", 32)) == 1.0
  assert fuzzy_dedup.estimate_jaccard(three, fuzzy_dedup.signature("only three", 32)) < 0.2


def test_signatures_are_identical_in_another_process_with_another_hash_seed():
  text = "Near-duplicate detection must not depend on the process: ünïcode, 数字 and 🙂 included."
  code = ("import sys; from data.stages import fuzzy_dedup; "
          "sys.stdout.write(fuzzy_dedup.signature(sys.argv[1], 64, seed=5).tobytes().hex())")
  env = dict(os.environ, PYTHONHASHSEED="12345")
  out = subprocess.run([sys.executable, "-c", code, text], cwd=REPO, env=env, capture_output=True, text=True,
                       check=True, timeout=120).stdout
  assert out == fuzzy_dedup.signature(text, 64, seed=5).tobytes().hex()


def test_signature_estimates_match_exact_shingle_jaccard():
  # At 512 permutations the standard error is sqrt(J(1-J)/512) <= 0.022, so |error| <= 0.05
  # holds for ~97% of pairs and the mean |error| is ~0.015 (0.8 x the standard error).
  rng = np.random.default_rng(0)
  exact, estimates = [], []
  for fraction in rng.uniform(0.0, 0.25, 300):
    words = _random_words(rng, 200)
    variant = _mutated(rng, words, fraction)
    exact.append(_shingle_jaccard(words, variant))
    estimates.append(fuzzy_dedup.estimate_jaccard(fuzzy_dedup.signature(words, 512),
                                                  fuzzy_dedup.signature(variant, 512)))
  errors = np.abs(np.array(estimates) - np.array(exact))
  assert np.ptp(exact) > 0.7  # the pairs cover low to high similarity
  stats = f"mean |error| {errors.mean():.4f}, within 0.05: {np.mean(errors <= 0.05):.3f}"
  assert np.mean(errors <= 0.05) >= 0.95, stats
  assert errors.mean() <= 0.02, stats


def test_lsh_with_default_bands_catches_similar_pairs_and_rejects_dissimilar():
  config = base.get_config()
  assert (config.fuzzy_dedup.bands, config.fuzzy_dedup.rows, config.fuzzy_dedup.threshold) == (32, 4, 0.7)
  stage = fuzzy_dedup.FuzzyDedup(config.fuzzy_dedup)
  rng = np.random.default_rng(1)
  items, jaccard = [], {}
  # Replacing a fraction f of words keeps ~(1 - f)^5 of the shingles, so J ~ q / (2 - q), q = (1 - f)^5:
  # f < 0.02 gives J > 0.82, f in [0.02, 0.08] J ~ 0.82 .. 0.49, f in [0.08, 0.16] J ~ 0.49 .. 0.27.
  fractions = np.concatenate([rng.uniform(0.0, 0.02, 150), rng.uniform(0.02, 0.08, 100),
                              rng.uniform(0.08, 0.16, 150)])
  for pair, fraction in enumerate(fractions):
    words = _random_words(rng, 200)
    variant = _mutated(rng, words, fraction)
    jaccard[f"p{pair:03d}b"] = _shingle_jaccard(words, variant)
    items += [(f"p{pair:03d}a", stage.prepare(_doc("", " ".join(words)))),
              (f"p{pair:03d}b", stage.prepare(_doc("", " ".join(variant))))]
  decisions = stage.resolve(items)
  assert all(decision[0] == doc_id[:-1] + "a" for doc_id, decision in decisions.items())
  high = [doc_id for doc_id, j in jaccard.items() if j >= 0.8]
  low = [doc_id for doc_id, j in jaccard.items() if j <= 0.5]
  assert len(high) >= 100 and len(low) >= 100
  caught = np.mean([doc_id in decisions for doc_id in high])
  flagged = np.mean([doc_id in decisions for doc_id in low])
  assert caught >= 0.95, f"caught {caught:.3f} of {len(high)} pairs with J >= 0.8"
  assert flagged <= 0.05, f"flagged {flagged:.3f} of {len(low)} pairs with J <= 0.5"


def _chain_signatures(num_permutations: int = 128) -> dict[str, np.ndarray]:
  """a ~ b ~ c with J(a, b) = J(b, c) = 0.8 and J(a, c) = 0.6 exactly (disjoint changed positions)."""
  rng = np.random.default_rng(7)
  a = rng.integers(0, 2**32, num_permutations, dtype=np.uint64).astype(np.uint32)
  positions = rng.permutation(num_permutations)
  changed = int(0.2 * num_permutations + 0.5)
  b = a.copy()
  b[positions[:changed]] ^= np.uint32(1)
  c = b.copy()
  c[positions[changed:2 * changed]] ^= np.uint32(1)
  return {"a": a, "b": b, "c": c}


def test_connected_components_keep_only_smallest_id_of_a_chain():
  stage = fuzzy_dedup.FuzzyDedup(base.get_config().fuzzy_dedup)
  sigs = _chain_signatures()
  assert fuzzy_dedup.estimate_jaccard(sigs["a"], sigs["c"]) < stage.threshold  # c reaches a only through b
  assert fuzzy_dedup.estimate_jaccard(sigs["a"], sigs["b"]) >= stage.threshold
  items = [("c", sigs["c"]), ("b", sigs["b"]), ("a", sigs["a"]), ("z", None)]
  decisions = stage.resolve(items)
  assert decisions.keys() == {"b", "c"}
  assert decisions["c"] == ("a", 76 / 128)  # the estimate against the kept copy, not against b
  assert stage.apply(_doc("c", "x"), decisions["c"]) == Drop("near_duplicate", detail="of a (J~0.59)")
  assert stage.resolve(_shuffled(items, 3)) == decisions
  # Identical signatures (exact copies) join the component too.
  assert stage.resolve(items + [("d", sigs["c"].copy())])["d"][0] == "a"


def test_fuzzy_dedup_on_documents_and_empty_text():
  stage = fuzzy_dedup.FuzzyDedup(base.get_config().fuzzy_dedup)
  rng = np.random.default_rng(2)
  words = _random_words(rng, 300)
  docs = [_doc("doc-2", " ".join(words)), _doc("doc-1", " ".join(_mutated(rng, words, 0.01))),
          _doc("doc-3", " ".join(_random_words(rng, 300))), _doc("e1", ""), _doc("e2", " ... ")]
  items = [(d.id, stage.prepare(d)) for d in docs]
  assert items[3][1] is None and items[4][1] is None
  decisions = stage.resolve(items)
  assert list(decisions) == ["doc-2"] and decisions["doc-2"][0] == "doc-1"
  assert isinstance(stage.apply(docs[0], decisions["doc-2"]), Drop)
  assert stage.apply(docs[1], None) is docs[1]


def test_fuzzy_dedup_config_errors_name_the_keys():
  config = base.get_config()
  config.fuzzy_dedup.bands = 20
  with pytest.raises(ValueError, match=r"fuzzy_dedup\.bands \* fuzzy_dedup\.rows .* fuzzy_dedup\.num_permutations"):
    fuzzy_dedup.FuzzyDedup(config.fuzzy_dedup)
  config = base.get_config()
  config.fuzzy_dedup.threshold = 1.5
  with pytest.raises(ValueError, match=r"fuzzy_dedup\.threshold"):
    fuzzy_dedup.FuzzyDedup(config.fuzzy_dedup)
  stage = fuzzy_dedup.FuzzyDedup(base.get_config().fuzzy_dedup)
  with pytest.raises(ValueError, match="num_permutations"):
    stage.resolve([("a", np.zeros(64, np.uint32))])


# ------------------------------------------------------------------------------------- substring


def test_suffix_array_and_repeated_windows_match_brute_force():
  rng = np.random.default_rng(3)
  for _ in range(30):
    sequence = rng.integers(0, 3, int(rng.integers(2, 80)))
    array, _ = substring_dedup.suffix_array(sequence, 1)
    assert array.tolist() == sorted(range(len(sequence)), key=lambda i: sequence[i:].tolist())
    window = int(rng.integers(1, 7))
    seen, expected = set(), []
    for p in range(len(sequence) - window + 1):
      key = tuple(sequence[p:p + window].tolist())
      if key in seen:
        expected.append(p)
      seen.add(key)
    assert substring_dedup.repeated_windows(sequence, window).tolist() == expected


def _paragraph_corpus(rng: np.random.Generator) -> tuple[list[Document], str, dict[str, str]]:
  """Five documents sharing one 60-token paragraph (50 words + 10 commas) between unique texts."""
  words = _random_words(rng, 50, "p")
  paragraph = " ".join(w + ("," if i % 5 == 4 else "") for i, w in enumerate(words))
  docs, expected = [], {}
  for i in range(5):
    intro = " ".join(_random_words(rng, 40, f"i{i}_"))
    outro = " ".join(_random_words(rng, 40, f"o{i}_")) + "."
    docs.append(_doc(f"doc{i}", f"{intro}\n\n{paragraph}\n\n{outro}"))
    expected[f"doc{i}"] = f"{intro}\n\n{outro}"
  return docs, paragraph, expected


def test_substring_dedup_removes_repeated_paragraph_from_all_but_first():
  config = base.get_config()
  stage = substring_dedup.SubstringDedup(config.substring_dedup)
  rng = np.random.default_rng(4)
  docs, paragraph, expected = _paragraph_corpus(rng)
  # A 30-token span shared by two documents is below min_tokens (50) and stays.
  short = " ".join(_random_words(rng, 30, "s"))
  docs.append(_doc("doc5", f"{short} " + " ".join(_random_words(rng, 30, "x"))))
  docs.append(_doc("doc6", " ".join(_random_words(rng, 30, "y")) + f" {short}"))
  docs.append(_doc("doc7", paragraph))  # nothing but the repeat
  items = [(d.id, stage.prepare(d)) for d in docs]
  decisions = stage.resolve(_shuffled(items, 5))
  assert decisions == stage.resolve(items)
  assert sorted(decisions) == ["doc1", "doc2", "doc3", "doc4", "doc7"]
  results = {d.id: stage.apply(d, decisions.get(d.id)) for d in docs}
  assert results["doc0"] is docs[0] and paragraph in results["doc0"].text
  for doc_id in ("doc1", "doc2", "doc3", "doc4"):
    assert results[doc_id].text == expected[doc_id]
    assert results[doc_id].metadata["edits"] == {"repeated_span": 1}
  assert results["doc5"] is docs[5] and results["doc6"] is docs[6]
  assert results["doc7"] == Drop("only_repeats", detail="0 non-space characters left after removing 1 repeated spans")


def test_substring_dedup_with_bytes():
  config = base.get_config()
  config.substring_dedup.unit = "bytes"
  config.substring_dedup.min_tokens = 100
  stage = substring_dedup.SubstringDedup(config.substring_dedup)
  rng = np.random.default_rng(6)
  docs, paragraph, _ = _paragraph_corpus(rng)
  docs.append(_doc("doc5", "Ünïcödé café — " + paragraph[:60] + " ünique tail"))  # 60+ bytes: too short
  decisions = stage.resolve((d.id, stage.prepare(d)) for d in docs)
  assert sorted(decisions) == ["doc1", "doc2", "doc3", "doc4"]
  for doc in docs[1:5]:
    text = stage.apply(doc, decisions[doc.id]).text
    assert paragraph[10:-10] not in text and len(text) < len(doc.text) - len(paragraph) + 20
    intro, outro = doc.text.split(f"\n\n{paragraph}\n\n")
    assert text.startswith(intro[:-5]) and text.endswith(outro[5:])
  spans = substring_dedup.removal_spans(np.array([1]), 2, substring_dedup.units_of("aéb", "bytes"))
  assert spans == ((1, 2),)  # bytes 1-2 are the two bytes of "é": the span widens to whole characters


def test_cut_spans_joins_pieces_by_the_strongest_break():
  text = "one two\n\nREPEAT here\n\nthree four REPEAT five\nsix REPEAT\nseven"
  spans = tuple(m.span() for m in re.finditer(r"REPEAT( here)?", text))
  assert substring_dedup.cut_spans(text, spans) == "one two\n\nthree four five\nsix\nseven"
  assert substring_dedup.cut_spans("REPEAT tail", ((0, 6),)) == "tail"


def test_substring_dedup_config_errors():
  config = base.get_config()
  config.substring_dedup.unit = "chars"
  with pytest.raises(ValueError, match=r"substring_dedup\.unit"):
    substring_dedup.SubstringDedup(config.substring_dedup)
  config = base.get_config()
  config.substring_dedup.min_tokens = 0
  with pytest.raises(ValueError, match=r"substring_dedup\.min_tokens"):
    substring_dedup.SubstringDedup(config.substring_dedup)


# ------------------------------------------------------------------------------------------ beam


def test_beam_transforms_give_the_same_decisions_as_resolve():
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  from apache_beam.testing.test_pipeline import TestPipeline  # pylint: disable=import-outside-toplevel
  from apache_beam.testing.util import assert_that, equal_to  # pylint: disable=import-outside-toplevel

  config = base.get_config()
  config.substring_dedup.min_tokens = 20
  rng = np.random.default_rng(8)
  docs, _, _ = _paragraph_corpus(rng)
  words = _random_words(rng, 120)
  docs += [_doc("near1", " ".join(words)), _doc("near0", " ".join(_mutated(rng, words, 0.02))),
           _doc("copy", docs[2].text.upper()), _doc("empty", "")]
  stages = {name: cls(config[name]) for name, cls in (("exact_dedup", exact_dedup.ExactDedup),
                                                       ("fuzzy_dedup", fuzzy_dedup.FuzzyDedup),
                                                       ("substring_dedup", substring_dedup.SubstringDedup))}
  features = {name: [(d.id, stage.prepare(d)) for d in docs] for name, stage in stages.items()}
  features["fuzzy_dedup"] += [(f"chain-{k}", sig) for k, sig in _chain_signatures().items()]
  expected = {name: sorted(stages[name].resolve(items).items()) for name, items in features.items()}
  # exact: doc2 (copy of "copy"); fuzzy: doc2, near1, chain-b, chain-c; substring: doc1-4, near1.
  assert [len(expected[name]) for name in stages] == [1, 4, 5]
  with TestPipeline(runner="FnApiRunner") as pipeline:  # in process; DirectRunner would try to fetch Prism
    for name, stage in stages.items():
      decisions = (pipeline | f"{name} features" >> beam.Create(features[name])
                   | f"{name} resolve" >> stage.beam_resolve())
      assert_that(decisions, equal_to(expected[name]), label=f"{name} matches resolve")
