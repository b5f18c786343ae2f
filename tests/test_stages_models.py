"""Model-based stages: the quality classifier and the perplexity filter (n-gram and checkpoint scorers)."""

from __future__ import annotations

import json
import os
import pickle
import random

import jax
import numpy as np
import pytest

from configs import tiny
from configs.curate import base
from data import corpus
from data import loader
from data import shards
from data import tokenizer as tokenizer_lib
from data.corpus import Document
from data.stages import Drop
from data.stages import classifier
from data.stages import perplexity
from lm import checkpoint as checkpoint_lib
from lm import sharding
from lm import train as train_lib

_MENU = ("Home", "About Us", "Contact", "Login", "Register", "Cart", "Checkout", "Blog", "FAQ", "Shop", "Sitemap",
         "My Account", "Wishlist", "Support", "Categories", "New Arrivals", "Gift Cards", "Track Order")
_KEYWORDS = ("cheap", "best", "price", "discount", "deal", "buy", "online", "free", "shipping", "sale", "offer",
             "casino", "bonus", "loans", "insurance", "shoes", "watches", "replica", "pills", "hotel", "booking",
             "coupon", "code", "top", "rated", "review", "2024", "win", "cash", "now", "fast", "the", "for", "and")
_BOILERPLATE = ("All rights reserved.", "Click here to subscribe!", "Sign up for our newsletter and get 10% off",
                "Share on Facebook", "Tweet this", "Posted by admin", "Leave a comment", "Read more >>",
                "Copyright 2024", "Add to cart", "Only 3 left in stock!", "Limited time offer!!!", "Call now",
                "Best seller", "Free returns", "Customers also bought", "Related posts", "Next page")


def web_spam(rng: random.Random) -> str:
  """A page of navigation menus, keyword lists and boilerplate lines, drawn from `rng`."""
  parts = []
  for _ in range(rng.randint(3, 8)):
    kind = rng.random()
    if kind < 0.35:
      parts.append(" | ".join(rng.sample(_MENU, rng.randint(4, 9))))
    elif kind < 0.7:
      parts.append(" ".join(rng.choice(_KEYWORDS) for _ in range(rng.randint(8, 30))))
    else:
      parts.append("\n".join(rng.sample(_BOILERPLATE, rng.randint(2, 5))))
  return "\n".join(parts)


def gibberish(rng: random.Random, num_words: int = 150) -> str:
  letters = "abcdefghijklmnopqrstuvwxyz"
  return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(num_words))


def shuffled_words(text: str, rng: random.Random) -> str:
  tokens = text.split()
  rng.shuffle(tokens)
  return " ".join(tokens)


@pytest.fixture(scope="module")
def prose() -> list[Document]:
  """Paragraphs of the Python language reference (pydoc topics) with at least 20 words."""
  from pydoc_data.topics import topics  # pylint: disable=import-outside-toplevel
  docs = []
  for name in sorted(topics):
    for i, paragraph in enumerate(topics[name].split("\n\n")):
      if len(paragraph.split()) >= 20 and not paragraph.startswith(" "):  # indented blocks are code / grammar
        docs.append(Document(id=f"{name}:{i}", source="reference", text=paragraph.strip()))
  return docs


@pytest.fixture(scope="module")
def spam() -> list[Document]:
  rng = random.Random(0)
  return [Document(id=f"spam:{i}", source="web", text=web_spam(rng)) for i in range(600)]


def reader(corpora: dict[str, list[Document]]):
  """read_documents(specs) over in-memory corpora keyed by source name, recording what was read."""
  calls = []

  def read_documents(specs):
    for spec in specs:
      calls.append(spec.name)
      yield from corpora[spec.name]

  read_documents.calls = calls
  return read_documents


# ---------------------------------------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def trained_classifier(prose, spam, tmp_path_factory):
  """(config.quality_classifier after ensure_model, its log lines, held-out prose, held-out spam)."""
  config = base.get_config()
  q = config.quality_classifier
  q.reference = [base.source("reference", "unused", "text")]
  q.web = [base.source("web", "unused", "text")]
  path = str(tmp_path_factory.mktemp("classifier") / "quality.npz")
  lines = []
  trained = classifier.ensure_model(q, reader({"reference": prose, "web": spam}), path, lines.append)
  held_prose = [d.text for d in prose if corpus.in_validation(d.id, classifier.HELDOUT_FRACTION, 0)]
  held_spam = [d.text for d in spam if corpus.in_validation(d.id, classifier.HELDOUT_FRACTION, 0)]
  return trained, lines, held_prose, held_spam


def test_classifier_separates_held_out_prose_from_spam(trained_classifier):
  config, lines, held_prose, held_spam = trained_classifier
  model = classifier.load(config.model_path)
  prose_scores, spam_scores = model.score_many(held_prose), model.score_many(held_spam)
  assert len(held_prose) >= 50 and len(held_spam) >= 30
  accuracy = (np.sum(prose_scores > 0.5) + np.sum(spam_scores < 0.5)) / (len(held_prose) + len(held_spam))
  print(f"held-out accuracy {accuracy:.3f}; median prose {np.median(prose_scores):.3f}, "
        f"spam {np.median(spam_scores):.3f}")
  assert accuracy >= 0.9
  assert np.median(prose_scores) > 0.5 > np.median(spam_scores)
  assert model.score(held_prose[0]) == pytest.approx(prose_scores[0])


def test_ensure_model_trains_logs_and_returns_a_copy(trained_classifier, prose, spam):
  config, lines, _, _ = trained_classifier
  assert os.path.exists(config.model_path)
  assert len(lines) == 1
  held = sum(corpus.in_validation(d.id, classifier.HELDOUT_FRACTION, 0) for d in prose + spam)
  assert f"trained on {len(prose) + len(spam) - held} documents" in lines[0]
  assert "held-out accuracy" in lines[0] and f"on {held} documents" in lines[0]
  accuracy = float(lines[0].split("held-out accuracy ")[1].split()[0])
  assert accuracy >= 0.9
  # An existing model is used as it is: nothing is read.
  read = reader({})
  assert classifier.ensure_model(config, read, "/nonexistent/other.npz", lines.append) is config
  assert read.calls == [] and len(lines) == 1


def test_ensure_model_without_model_or_corpora_names_the_keys():
  q = base.get_config().quality_classifier
  with pytest.raises(ValueError, match=r"quality_classifier\.model_path.*quality_classifier\.reference"):
    classifier.ensure_model(q, reader({}), "/tmp/unused.npz", print)


def test_classifier_save_load_round_trip_and_format(trained_classifier, prose, spam, tmp_path):
  config, _, held_prose, held_spam = trained_classifier
  model = classifier.load(config.model_path)
  copy_path = str(tmp_path / "copy.npz")
  model.save(copy_path)
  reloaded = classifier.load(copy_path)
  texts = held_prose[:20] + held_spam[:20]
  np.testing.assert_array_equal(reloaded.score_many(texts), model.score_many(texts))
  with np.load(copy_path, allow_pickle=False) as data:  # numbers and a JSON string only
    settings = json.loads(str(data["settings"]))
    indices, values = data["indices"], data["values"]
  assert settings["ngram_max"] == 2 and settings["num_features"] == 2**20
  assert indices.dtype == np.int64 and indices.shape == values.shape
  assert 0 < indices.size < 2**20  # stored sparse
  assert len(pickle.dumps(model)) < 16 * indices.size + 4096  # the dense weights are not shipped


def test_training_is_deterministic_for_a_seed(prose, spam):
  texts_a, texts_b = [d.text for d in prose[:200]], [d.text for d in spam[:200]]
  one = classifier.train(texts_a, texts_b, ngram_max=2, num_features=2**16, epochs=3, seed=7)
  two = classifier.train(texts_a, texts_b, ngram_max=2, num_features=2**16, epochs=3, seed=7)
  np.testing.assert_array_equal(one.indices, two.indices)
  np.testing.assert_array_equal(one.values, two.values)
  with pytest.raises(ValueError, match="both classes"):
    classifier.train(texts_a, [], ngram_max=2, num_features=2**16, epochs=3, seed=7)


def test_classifier_load_errors(tmp_path):
  missing = str(tmp_path / "missing.npz")
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    classifier.load(missing)
  text_file = tmp_path / "not_a_model.npz"
  text_file.write_text("hello")
  with pytest.raises(ValueError, match="not_a_model.npz"):
    classifier.load(str(text_file))
  other = tmp_path / "other.npz"
  np.savez(str(other), settings=np.array(json.dumps({"kind": "something_else"})))
  with pytest.raises(ValueError, match="something_else"):
    classifier.load(str(other))


def test_quality_filter_drops_spam_and_keeps_prose(trained_classifier):
  config, _, held_prose, held_spam = trained_classifier
  stage = classifier.QualityClassifierFilter(config)
  kept = stage(Document(id="p", source="web", text=held_prose[0]))
  assert isinstance(kept, Document) and kept.metadata["quality_score"] > 0.5
  dropped = [stage(Document(id=f"s{i}", source="web", text=t)) for i, t in enumerate(held_spam)]
  assert sum(isinstance(d, Drop) for d in dropped) >= 0.9 * len(dropped)
  drop = next(d for d in dropped if isinstance(d, Drop))
  assert drop.reason == "quality_score"
  score, limit = drop.detail.split(" < ")
  assert float(score) < 0.5 and float(limit) == 0.5
  restored = pickle.loads(pickle.dumps(stage))
  assert restored(Document(id="p", source="web", text=held_prose[0])) == kept


def test_quality_filter_without_model_path_says_how_to_get_one():
  with pytest.raises(ValueError, match=r"quality_classifier\.model_path.*reference.*web"):
    classifier.QualityClassifierFilter(base.get_config().quality_classifier)


# ---------------------------------------------------------------------------------------------- n-gram


@pytest.fixture(scope="module")
def ngram(prose, tmp_path_factory):
  """(config.perplexity after ensure_model, log lines, held-out prose texts)."""
  p = base.get_config().perplexity
  p.reference = [base.source("reference", "unused", "text")]
  path = str(tmp_path_factory.mktemp("ngram") / "perplexity.npz")
  lines = []
  trained = perplexity.ensure_model(p, reader({"reference": prose}), path, lines.append)
  held = [d.text for d in prose if corpus.in_validation(d.id, p.heldout_fraction, 0)]
  return trained, lines, held


def test_kneser_ney_distribution_sums_to_one(prose):
  for order in (1, 2, 3, 4):
    model = perplexity.train([d.text for d in prose[:300]], order=order, discount=0.75)
    predicted = [w for w in model.vocab if w != perplexity.BOS]
    assert perplexity.UNK in predicted and perplexity.EOS in predicted
    for context in ([], ["the"], ["of", "the"], ["is", "a", "new"], ["never", "seen", "words"], ["the", "qqqq"]):
      total = sum(model.probability(context, w) for w in predicted)
      assert total == pytest.approx(1.0, abs=1e-9), (order, context)
    assert 0.0 < model.probability(["the"], "qqqq-unknown") < model.probability(["the"], "following")


def test_kneser_ney_uses_continuation_counts():
  # "francisco" is frequent but only ever follows "san": as a unigram (continuation count 1)
  # it must get less mass than "glasses", which follows many words.
  texts = ["san francisco"] * 20 + [f"{w} glasses" for w in ("reading", "sun", "wine", "safety", "blue")]
  model = perplexity.train(texts, order=2, discount=0.75)
  assert model.probability(["unseen"], "francisco") < model.probability(["unseen"], "glasses")
  assert model.probability(["san"], "francisco") > 0.9


def test_perplexity_orders_prose_shuffled_and_gibberish(ngram):
  config, _, held = ngram
  model = perplexity.load(config.model_path)
  rng = random.Random(0)
  prose_ppl = np.array([model.perplexity(t) for t in held])
  shuffled_ppl = np.array([model.perplexity(shuffled_words(t, rng)) for t in held])
  gibberish_ppl = np.array([model.perplexity(gibberish(rng)) for _ in range(20)])
  print(f"median perplexity: prose {np.median(prose_ppl):.0f}, shuffled {np.median(shuffled_ppl):.0f}, "
        f"gibberish {np.median(gibberish_ppl):.0f}")
  assert np.median(shuffled_ppl) > 2.5 * np.median(prose_ppl)
  assert np.mean(shuffled_ppl > prose_ppl) >= 0.95
  assert np.min(gibberish_ppl) > 10 * np.max(prose_ppl)


def test_ngram_ensure_model_stores_held_out_quantiles(ngram):
  config, lines, held = ngram
  model = perplexity.load(config.model_path)
  quantiles = model.reference_quantiles
  assert quantiles.shape == (101,) and np.all(np.diff(quantiles) >= 0)
  ppl = np.array([model.perplexity(t) for t in held])
  np.testing.assert_allclose(quantiles[[0, 50, 100]], [ppl.min(), np.median(ppl), ppl.max()])
  assert len(lines) == 1 and f"{len(held)} documents" in lines[0] and "3-gram" in lines[0]


def test_ngram_save_load_round_trip(ngram, tmp_path):
  config, _, held = ngram
  model = perplexity.load(config.model_path)
  copy_path = str(tmp_path / "copy.npz")
  model.save(copy_path)
  reloaded = perplexity.load(copy_path)
  assert reloaded.vocab == model.vocab and reloaded.counts == model.counts
  np.testing.assert_array_equal(reloaded.reference_quantiles, model.reference_quantiles)
  assert [reloaded.perplexity(t) for t in held[:10]] == [model.perplexity(t) for t in held[:10]]
  with pytest.raises(FileNotFoundError, match="nothing.npz"):
    perplexity.load(str(tmp_path / "nothing.npz"))
  classifier.train(["a b"], ["c d"], ngram_max=1, num_features=16, epochs=1, seed=0).save(str(tmp_path / "c.npz"))
  with pytest.raises(ValueError, match="c.npz"):
    perplexity.load(str(tmp_path / "c.npz"))


def test_perplexity_filter_drops_gibberish_and_keeps_prose(ngram):
  config, _, held = ngram
  stage = perplexity.PerplexityFilter(config)
  model = perplexity.load(config.model_path)
  assert stage.low_limit is None
  assert stage.high_limit == pytest.approx(np.interp(0.99, perplexity.QUANTILE_GRID, model.reference_quantiles))
  out = stage(Document(id="g", source="web", text=gibberish(random.Random(1))))
  assert isinstance(out, Drop) and out.reason == "perplexity_high"
  value, limit = out.detail.split(" > ")
  assert float(value) > float(limit)
  results = [stage(Document(id=f"p{i}", source="web", text=t)) for i, t in enumerate(held)]
  kept = [r for r in results if isinstance(r, Document)]
  assert len(kept) >= 0.95 * len(held)
  assert kept[0].metadata["perplexity"] == pytest.approx(model.perplexity(kept[0].text), rel=1e-4)


def test_perplexity_filter_low_quantile_drops_predictable_text(ngram, prose):
  config, _, held = ngram
  low = config.copy_and_resolve_references()
  low.low_quantile = 0.5
  stage = perplexity.PerplexityFilter(low)
  model = perplexity.load(config.model_path)
  assert stage.low_limit == pytest.approx(model.reference_quantiles[50])
  # A training paragraph said over and over is far more predictable than typical reference text.
  trained_text = next(d.text for d in prose if not corpus.in_validation(d.id, config.heldout_fraction, 0))
  out = stage(Document(id="r", source="web", text=" ".join([trained_text] * 20)))
  assert isinstance(out, Drop) and out.reason == "perplexity_low"
  value, limit = out.detail.split(" < ")
  assert float(value) < float(limit)
  typical = sorted(held, key=model.perplexity)[3 * len(held) // 4]  # above the median, below the 99% point
  assert isinstance(stage(Document(id="t", source="web", text=typical)), Document)
  assert isinstance(perplexity.PerplexityFilter(config)(Document(id="r", source="web", text=trained_text)), Document)


def test_perplexity_settings_errors(tmp_path):
  p = base.get_config().perplexity
  with pytest.raises(ValueError, match=r"perplexity\.model_path.*perplexity\.reference"):
    perplexity.PerplexityFilter(p)
  with pytest.raises(ValueError, match=r"perplexity\.model_path.*perplexity\.reference"):
    perplexity.ensure_model(p, reader({}), str(tmp_path / "m.npz"), print)
  p.low_quantile, p.high_quantile = 0.9, 0.5
  with pytest.raises(ValueError, match=r"perplexity\.low_quantile"):
    perplexity.PerplexityFilter(p)
  with pytest.raises(ValueError, match=r"perplexity\.discount"):
    perplexity.train(["a b c"], order=3, discount=1.5)


# ---------------------------------------------------------------------------------------------- checkpoint


@pytest.fixture(scope="module")
def tiny_run(prose, tmp_path_factory):
  """(run_dir, parameters, tokenizer): a tiny run directory holding a freshly initialised step-0 checkpoint."""
  run_dir = str(tmp_path_factory.mktemp("tiny_run"))
  config = tiny.get_config()
  config.train.run_dir = run_dir
  with open(os.path.join(run_dir, "config.json"), "w") as f:
    f.write(config.to_json(indent=2))
  tokenizer = tokenizer_lib.train(prose, config.model.vocab_size, os.path.join(run_dir, "tokenizer"),
                                  max_sentences=20000, seed=0)
  trainer = train_lib.build(config, sharding.make_mesh(config.mesh))
  state = trainer.init_state(jax.random.PRNGKey(0))
  tokens = shards.write(prose[:200], os.path.join(run_dir, "tokenizer"), os.path.join(run_dir, "tokens"),
                        validation_fraction=0.0, split_seed=0, record_tokens=256, docs_per_shard=100, num_workers=1,
                        chunk_docs=64, log=lambda _: None)
  assert tokens["sources"]
  opened = shards.open_tokens(os.path.join(run_dir, "tokens"))
  iterator = loader.TrainIterator(loader.make_stream(
      {n: opened.splits[n]["train"] for n in opened.sources}, seq_len=config.data.seq_len,
      global_batch_size=config.train.global_batch_size, seed=0, pad_id=tokenizer.pad_id, total_steps=10))
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(run_dir, "checkpoints"), 1, 1)
  checkpointer.save(0, state, iterator, force=True)
  checkpointer.wait()
  checkpointer.close()
  return run_dir, trainer, state.params, tokenizer


def test_checkpoint_scorer_matches_the_training_loss(tiny_run, tmp_path):
  run_dir, trainer, params, tokenizer = tiny_run
  scorer = perplexity.CheckpointScorer(run_dir)
  assert scorer.step == 0
  texts = ["The quick brown fox jumps over the lazy dog.", "for x in range(10): print(x)"]
  scores = scorer.perplexities(texts)
  # The same documents through the training code's own shards and evaluation step (one source each).
  shards.write([Document(f"d{i}", f"s{i}", text) for i, text in enumerate(texts)], os.path.join(run_dir, "tokenizer"),
               str(tmp_path / "tokens"), validation_fraction=0.0, split_seed=0, record_tokens=256, docs_per_shard=10,
               num_workers=1, chunk_docs=8, log=lambda _: None)
  opened = shards.open_tokens(str(tmp_path / "tokens"))
  for i, score in enumerate(scores):
    rows = loader.evaluation_rows(opened.splits[f"s{i}"]["train"], seq_len=64, pad_id=tokenizer.pad_id)
    assert len(rows["inputs"]) == 1
    batch = next(loader.evaluation_batches(rows, 8))
    loss, tokens = trainer.eval_step(params, sharding.global_batch(batch, trainer.batch_sharding))
    assert score == pytest.approx(float(np.exp(float(loss) / float(tokens))), rel=1e-4)
  assert 100 < scores[0] < 5000  # an untrained model is near uniform over its 512 pieces


def test_checkpoint_mode_measures_quantiles_and_filters(tiny_run, prose, tmp_path):
  run_dir, _, _, _ = tiny_run
  p = base.get_config().perplexity
  p.model, p.run_dir = "checkpoint", run_dir
  p.reference = [base.source("reference", "unused", "text")]
  lines = []
  config = perplexity.ensure_model(p, reader({"reference": prose[:16]}), str(tmp_path / "q.npz"), lines.append)
  assert "scored 16 reference documents with step 0" in lines[0]
  stage = perplexity.PerplexityFilter(config)
  expected = perplexity.CheckpointScorer(run_dir).perplexities([d.text for d in prose[:16]])
  assert stage.high_limit == pytest.approx(np.quantile(expected, 0.99))
  shipped = pickle.loads(pickle.dumps(stage))
  assert shipped._scorer is None  # pylint: disable=protected-access
  out = shipped(Document(id="x", source="web", text=prose[0].text))
  assert isinstance(out, Document)
  assert out.metadata["perplexity"] == pytest.approx(expected[0], rel=1e-4)
  other = p.copy_and_resolve_references()
  other.model_path, other.run_dir = config.model_path, str(tmp_path)
  with pytest.raises(ValueError, match=r"perplexity\.model_path.*perplexity\.run_dir"):
    perplexity.PerplexityFilter(other)
