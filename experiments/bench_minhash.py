"""MinHash signatures of `data.stages.fuzzy_dedup` against datasketch: speed and estimate quality.

    python -m experiments.bench_minhash [--num_docs 4000] [--num_permutations 128] [--seed 0]

Generates `num_docs` documents (300-800 words drawn from a Zipfian vocabulary of 20,000
pseudo-words) in pairs: the second document of a pair is the first with a random 0-60% of its
words replaced, so pair Jaccard similarities spread over [0, 1]. Both implementations hash the
same 5-word shingles of the same word lists with `num_permutations` permutations:

* ``numpy``: `fuzzy_dedup.signature` (vectorised word hashes, shingle hashes and permutations);
* ``datasketch``: `MinHash.bulk`, datasketch's batch path (one `update_batch` per document),
  fed the UTF-8 shingle strings it needs (their construction is timed with it).

Prints docs/s from word lists (the signature alone: numpy from the list, datasketch from the
list through its shingle strings) and from raw text (numpy finds the words itself; datasketch's
words come from `fuzzy_dedup.words_of`, Python's `re`), the speed ratios, and over the pairs the
mean |estimate - exact Jaccard of the shingle sets| of each and the mean |numpy estimate -
datasketch estimate|. The expected error of either is sqrt(J (1 - J) / num_permutations) per
pair. `run(num_docs)` returns the rows for other benchmark scripts.
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
import numpy as np

from data.stages import fuzzy_dedup

SHINGLE_WORDS = 5
VOCABULARY = 20_000


def generate_pairs(num_docs: int, seed: int) -> list[str]:
  """`num_docs` texts (rounded up to even); texts 2k and 2k + 1 share a random 40-100% of their words."""
  rng = np.random.default_rng(seed)
  vocabulary = np.array([f"w{i:05d}" for i in range(VOCABULARY)])
  zipf = 1.0 / np.arange(1, VOCABULARY + 1)
  zipf /= zipf.sum()
  texts = []
  for _ in range((num_docs + 1) // 2):
    words = rng.choice(vocabulary, size=int(rng.integers(300, 800)), p=zipf)
    variant = words.copy()
    replaced = rng.random(len(words)) < rng.uniform(0.0, 0.6)
    variant[replaced] = rng.choice(vocabulary, size=int(replaced.sum()), p=zipf)
    texts += [" ".join(words), " ".join(variant)]
  return texts


def shingle_strings(words: list[str]) -> list[bytes]:
  """The UTF-8 5-word shingles of a word list (the whole list when shorter), as datasketch takes them."""
  width = min(SHINGLE_WORDS, len(words))
  return [" ".join(words[i:i + width]).encode("utf-8") for i in range(len(words) - width + 1)]


def exact_jaccard(words_a: list[str], words_b: list[str]) -> float:
  shingles_a, shingles_b = set(shingle_strings(words_a)), set(shingle_strings(words_b))
  return len(shingles_a & shingles_b) / len(shingles_a | shingles_b)


def _numpy_signatures(texts_or_word_lists, num_permutations, seed):
  return [fuzzy_dedup.signature(item, num_permutations, SHINGLE_WORDS, seed) for item in texts_or_word_lists]


def _datasketch_minhashes(word_lists, num_permutations, seed):
  from datasketch import MinHash  # pylint: disable=import-outside-toplevel
  return MinHash.bulk([shingle_strings(words) for words in word_lists], num_perm=num_permutations, seed=seed)


def _datasketch_from_text(texts, num_permutations, seed):
  return _datasketch_minhashes([fuzzy_dedup.words_of(text) for text in texts], num_permutations, seed)


def _timed(function, *args) -> tuple[float, object]:
  start = time.perf_counter()
  result = function(*args)
  return time.perf_counter() - start, result


def run(num_docs: int, num_permutations: int = 128, seed: int = 0) -> list[dict]:
  """Measures both implementations on `num_docs` generated documents.

  Returns:
    One dict per implementation: method, docs_per_s (from word lists), docs_per_s_from_text
    (tokenisation included), speed_ratio and speed_ratio_from_text (numpy docs/s over this
    row's), mean_abs_error (vs the
    exact Jaccard of the pairs' shingle sets), mean_abs_diff_to_numpy (estimate vs numpy's).
    datasketch's row is left out, with a message, when it is not installed.
  """
  texts = generate_pairs(num_docs, seed)
  word_lists = [fuzzy_dedup.words_of(text) for text in texts]
  pairs = [(i, i + 1) for i in range(0, len(texts), 2)]
  exact = np.array([exact_jaccard(word_lists[a], word_lists[b]) for a, b in pairs])

  _numpy_signatures(texts[:10], num_permutations, seed)  # builds the character tables and powers once
  numpy_s, signatures = _timed(_numpy_signatures, word_lists, num_permutations, seed)
  numpy_text_s, from_text = _timed(_numpy_signatures, texts, num_permutations, seed)
  if any(not np.array_equal(a, b) for a, b in zip(signatures, from_text)):
    raise AssertionError("signatures from text and from word lists differ")
  numpy_estimates = np.array([fuzzy_dedup.estimate_jaccard(signatures[a], signatures[b]) for a, b in pairs])
  rows = [{
      "method": "numpy (fuzzy_dedup.signature)",
      "docs_per_s": len(texts) / numpy_s,
      "docs_per_s_from_text": len(texts) / numpy_text_s,
      "speed_ratio": 1.0,
      "speed_ratio_from_text": 1.0,
      "mean_abs_error": float(np.mean(np.abs(numpy_estimates - exact))),
      "mean_abs_diff_to_numpy": 0.0,
  }]
  try:
    import datasketch  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    print("datasketch is not installed: its rows are skipped (pip install datasketch)")
    return rows
  datasketch_s, minhashes = _timed(_datasketch_minhashes, word_lists, num_permutations, seed)
  datasketch_text_s, _ = _timed(_datasketch_from_text, texts, num_permutations, seed)
  datasketch_estimates = np.array([minhashes[a].jaccard(minhashes[b]) for a, b in pairs])
  rows.append({
      "method": "datasketch (MinHash.bulk)",
      "docs_per_s": len(texts) / datasketch_s,
      "docs_per_s_from_text": len(texts) / datasketch_text_s,
      "speed_ratio": datasketch_s / numpy_s,
      "speed_ratio_from_text": datasketch_text_s / numpy_text_s,
      "mean_abs_error": float(np.mean(np.abs(datasketch_estimates - exact))),
      "mean_abs_diff_to_numpy": float(np.mean(np.abs(datasketch_estimates - numpy_estimates))),
  })
  return rows


FLAGS = flags.FLAGS
flags.DEFINE_integer("num_docs", 4000, "generated documents (half as many pairs)")
flags.DEFINE_integer("num_permutations", 128, "signature length")
flags.DEFINE_integer("seed", 0, "seed of the documents and of both implementations' permutations")


def print_table(rows: list[dict], num_docs: int, num_permutations: int) -> None:
  """The rows of `run` as a table."""
  print(f"MinHash of {num_docs} generated documents, {SHINGLE_WORDS}-word shingles, "
        f"{num_permutations} permutations; errors over {(num_docs + 1) // 2} pairs")
  header = (f"{'method':<32} {'docs/s words':>13} {'docs/s text':>12} {'numpy speed-up':>15} "
            f"{'(text)':>7} {'mean|est-J|':>12} {'mean|est-numpy|':>16}")
  print(header)
  print("-" * len(header))
  for row in rows:
    print(f"{row['method']:<32} {row['docs_per_s']:>13.0f} {row['docs_per_s_from_text']:>12.0f} "
          f"{row['speed_ratio']:>14.2f}x {row['speed_ratio_from_text']:>6.2f}x {row['mean_abs_error']:>12.4f} "
          f"{row['mean_abs_diff_to_numpy']:>16.4f}")


def main(argv):
  del argv
  print_table(run(FLAGS.num_docs, FLAGS.num_permutations, FLAGS.seed), FLAGS.num_docs, FLAGS.num_permutations)


if __name__ == "__main__":
  app.run(main)
