"""Base config of the curation pipeline: every field, defined once, with its meaning.

    python -m data.curate --config configs/curate/NAME.py [--config.FIELD=VALUE ...]

An experiment file starts from `get_config()` and changes values. Thresholds default to
the published values of the rule sets they come from (Gopher: Rae et al. 2021, Table A1;
C4: Raffel et al. 2020, section 2.2; FineWeb: Penedo et al. 2024).
"""

import os

import ml_collections

_LISTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data", "lists")


def source(name: str, paths: str, format: str,  # pylint: disable=redefined-builtin
           text_field: str = "text", id_field: str = "", url_field: str = "url") -> ml_collections.ConfigDict:
  """One input of `config.sources`."""
  return ml_collections.ConfigDict({
      "name": name,  # source name kept on every document and used to group the report
      "paths": paths,  # file, folder or glob; several separated by commas
      "format": format,  # jsonl (also .gz / .zst) | parquet | warc | text (a folder of text files)
      "text_field": text_field,  # jsonl / parquet: the field holding the text
      "id_field": id_field,  # jsonl / parquet: field holding a document id ('' = derived from file and record)
      "url_field": url_field,  # jsonl / parquet: field holding the URL ('' = none)
  })


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.sources = []  # inputs, each made with `source(...)`
  c.output_dir = "curated/run"  # kept documents (JSONL shards), report.json, report.txt, removed_samples.jsonl
  c.pipeline = (  # stages in the order they run; leave one out to skip it
      "url_filter", "html_extraction", "language", "gopher_quality", "gopher_repetition", "c4", "fineweb",
      "quality_classifier", "perplexity", "exact_dedup", "fuzzy_dedup", "substring_dedup", "pii", "toxicity",
      "decontamination")
  c.num_workers = 0  # local runner processes; 0 = one per CPU core (Beam: set by beam_options)
  c.chunk_docs = 64  # documents handed to a worker at a time
  c.docs_per_shard = 10_000  # kept documents per output JSONL shard
  c.samples_per_stage = 5  # removed documents kept per stage for inspection (chosen by a seeded hash of the id)
  c.seed = 0  # seed of the sample choice and of every seeded stage
  c.min_doc_chars = 1  # documents shorter than this after reading are dropped as "empty"
  c.max_doc_chars = 10_000_000  # documents longer than this are dropped as "too_long" (gigantic records)
  c.error_examples = 5  # read errors listed with file and line / offset in the report, per reason
  c.beam_options = ""  # Apache Beam options for `--runner=beam` ('' = in-process), e.g. "--runner=DataflowRunner ..."

  c.url_filter = u = ml_collections.ConfigDict()
  u.blocked_domains_file = os.path.join(_LISTS, "blocked_domains.txt")  # a domain per line (subdomains match)
  u.banned_words_file = os.path.join(_LISTS, "url_banned_words.txt")  # a URL word (split on non-letters) in it drops
  u.soft_banned_words_file = os.path.join(_LISTS, "url_soft_banned_words.txt")  # drops when this many URL words match:
  u.soft_banned_min_matches = 2  # ... (soft-banned words are ambiguous alone)
  u.drop_missing_url = False  # whether a document without a URL is dropped (text sources have none)

  c.html_extraction = h = ml_collections.ConfigDict()
  h.main_content = True  # boilerplate removal: keep the main content only (navigation, footers, ads removed)
  h.keep_alt_texts = False  # include image alt texts
  h.keep_list_bullets = True  # render list items with a bullet

  c.language = l = ml_collections.ConfigDict()
  # ISO 639-1 codes the detector chooses among
  l.candidates = ("en", "de", "fr", "es", "it", "pt", "nl", "pl", "ru", "sv", "tr", "zh", "ja")
  l.keep = ("en",)  # languages kept
  l.min_score = 0.65  # drop when the detector's confidence in a kept language is below this (FineWeb: 0.65)
  l.max_chars = 2000  # characters of the document given to the detector (its cost grows with length)
  l.low_accuracy = False  # the detector's faster, less accurate mode

  c.gopher_quality = g = ml_collections.ConfigDict()
  g.min_words = 50  # words per document, at least
  g.max_words = 100_000  # words per document, at most
  g.min_mean_word_length = 3.0  # mean word length in characters, at least
  g.max_mean_word_length = 10.0  # ... at most
  g.max_symbol_word_ratio = 0.1  # '#' per word, and ellipses ('...' / '…') per word, each at most
  g.max_bullet_lines_ratio = 0.9  # lines starting with a bullet, at most
  g.max_ellipsis_lines_ratio = 0.3  # lines ending with an ellipsis, at most
  g.min_alpha_words_ratio = 0.8  # words containing a letter, at least
  g.stop_words = ("the", "be", "to", "of", "and", "that", "have", "with")  # English function words
  g.min_stop_words = 2  # distinct stop words present, at least

  c.gopher_repetition = r = ml_collections.ConfigDict()
  r.max_duplicate_lines_ratio = 0.3  # lines that duplicate an earlier line, at most
  r.max_duplicate_paragraphs_ratio = 0.3  # paragraphs (split on blank lines) duplicating an earlier one, at most
  r.max_duplicate_line_chars_ratio = 0.2  # characters in duplicate lines, at most
  r.max_duplicate_paragraph_chars_ratio = 0.2  # characters in duplicate paragraphs, at most
  r.top_ngram_max_chars_ratio = ((2, 0.20), (3, 0.18), (4, 0.16))  # (n, limit): chars of the most frequent n-gram
  r.duplicate_ngram_max_chars_ratio = (  # (n, limit): chars covered by n-grams occurring more than once
      (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))

  c.c4 = c4 = ml_collections.ConfigDict()
  c4.end_punctuation = (".", "!", "?", '"')  # a kept line ends with one of these
  c4.min_words_per_line = 3  # lines with fewer words are removed
  c4.max_word_length = 1000  # lines with a longer word are removed
  c4.min_sentences = 5  # documents with fewer sentences (after line removal) are dropped
  c4.remove_javascript_lines = True  # lines mentioning "javascript" are removed
  c4.policy_phrases = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                       "use cookies")  # lines containing one are removed
  c4.drop_lorem_ipsum = True  # documents containing "lorem ipsum" are dropped
  c4.drop_curly_bracket = True  # documents containing "{" are dropped (code, templates)
  c4.remove_citations = True  # "[1]", "[edit]", "[citation needed]" markers are removed

  c.fineweb = f = ml_collections.ConfigDict()
  f.min_punctuated_lines_ratio = 0.12  # lines ending in punctuation, at least
  f.max_short_lines_ratio = 0.67  # lines of at most `short_line_chars` characters, at most
  f.short_line_chars = 30  # what counts as a short line
  f.max_duplicate_line_chars_ratio = 0.1  # characters in lines that duplicate an earlier line, at most
  f.max_newlines_per_word = 0.3  # newlines per word, at most (text broken into one-word lines)
  f.end_punctuation = (".", "!", "?", '"', "'", ":", ";", ")", "…")  # what counts as a punctuated line end

  c.quality_classifier = q = ml_collections.ConfigDict()
  q.model_path = ""  # the trained classifier (.npz); trained at the start of a run when missing
  q.reference = []  # training corpora of the positive class (reference text), each made with `source(...)`
  q.web = []  # training corpora of the negative class (web text)
  q.ngram_max = 2  # word n-grams 1..ngram_max are the features
  q.num_features = 2**20  # hashed feature space
  q.epochs = 5  # passes of the SGD trainer over the training documents
  q.min_score = 0.5  # drop documents whose probability of the reference class is below this

  c.perplexity = p = ml_collections.ConfigDict()
  p.model = "ngram"  # ngram (trained on `reference`) | checkpoint (a run directory of this project)
  p.model_path = ""  # ngram: n-gram model (.npz); checkpoint: reference perplexity quantiles; made at start if missing
  p.run_dir = ""  # the run directory whose latest checkpoint and tokenizer score documents when model = checkpoint
  p.reference = []  # training corpora of the n-gram model, each made with `source(...)`
  p.order = 3  # n-gram order (words)
  p.discount = 0.75  # absolute discount of interpolated Kneser-Ney
  p.heldout_fraction = 0.1  # reference documents held out to measure the perplexity distribution
  p.low_quantile = 0.0  # drop below this quantile of held-out reference perplexity (0 = keep the low tail)
  p.high_quantile = 0.99  # drop above this quantile (1 = keep the high tail)

  c.exact_dedup = e = ml_collections.ConfigDict()
  e.lowercase = True  # normalisation before hashing: lowercase
  e.strip_punctuation = True  # ... remove punctuation
  e.collapse_whitespace = True  # ... collapse runs of whitespace to one space

  c.fuzzy_dedup = m = ml_collections.ConfigDict()
  m.shingle_words = 5  # words per shingle
  m.num_permutations = 128  # MinHash signature length (= bands * rows)
  m.bands = 32  # LSH bands
  m.rows = 4  # rows per band; P(candidate | Jaccard s) = 1 - (1 - s^rows)^bands
  m.threshold = 0.7  # candidates whose estimated Jaccard is below this are not duplicates
  m.seed = 1  # seed of the hash permutations
  m.lowercase = True  # shingles are built from lowercased words

  c.substring_dedup = s = ml_collections.ConfigDict()
  s.min_tokens = 50  # repeated spans at least this long are removed from every document but the first
  s.unit = "tokens"  # tokens (words and punctuation marks) | bytes (UTF-8)
  s.min_remaining_chars = 1  # documents left shorter than this are dropped

  c.pii = pi = ml_collections.ConfigDict()
  pi.kinds = ("email", "phone", "ip", "credit_card", "ssn")  # what is redacted
  pi.placeholder = "<{kind}>"  # replacement; {kind} is the upper-case kind, e.g. <EMAIL>

  c.toxicity = t = ml_collections.ConfigDict()
  t.words_file = os.path.join(_LISTS, "toxic_words.txt")  # one word or phrase per line
  t.max_word_fraction = 0.005  # drop when listed words / words exceeds this ...
  t.min_matches = 2  # ... and at least this many listed words occur
  t.classifier_path = ""  # optional classifier (.npz, trained like the quality classifier; positive = toxic)
  t.classifier_max_score = 0.5  # drop when the classifier's toxic probability exceeds this
  t.toxic = []  # training corpora of the toxic class, used when classifier_path is missing
  t.clean = []  # training corpora of the clean class

  c.decontamination = d = ml_collections.ConfigDict()
  d.eval_files = ()  # evaluation sets (JSONL: every string field is text; else plain text); '' entries ignored
  d.ngram = 13  # words per n-gram; a document sharing one n-gram with an evaluation set is dropped
  d.lowercase = True  # n-grams are built from lowercased words
  return c
