"""The mixture loader: exact mixing, document-causal packing, resumable and elastic positions."""

import collections

import numpy as np
import pytest

from data import loader
from data import tokenizer as tokenizer_lib
from tests.conftest import make_stream

SEQ = 64


def _equal(a, b):
  for key in loader.BATCH_KEYS:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def row_source(tokens):
  """Row content (inputs bytes) -> the sources having such a row, for every training row of every source."""
  lookup = collections.defaultdict(set)
  stream = make_stream(tokens, SEQ, 8)  # seed 0, as every stream of these tests: the same rows
  for name, rows in zip(stream.names, stream.sources):
    for q in range(rows.num_rows):
      lookup[rows.row(q)["inputs"].tobytes()].add(name)
  return lookup


def _source_counts(stream, row_source, steps):
  counted = collections.Counter()
  for step in steps:
    for row in stream.batch(step)["inputs"]:
      sources = row_source[row.tobytes()]
      assert sources  # a real row of a source
      counted[min(sources) if len(sources) == 1 else "either"] += 1  # a few rows (licence headers) are in both
  return counted


def test_realised_proportions_match_the_weights_over_10000_sequences(tokens, row_source):
  stream = make_stream(tokens, SEQ, 100, mixture=(("code", 0.3), ("docs", 0.7)))
  counted = _source_counts(stream, row_source, range(100))  # 10,000 sequences, identified by their content
  assert sum(counted.values()) == 10_000
  assert abs(counted["code"] / 10_000 - 0.3) < 0.01 and abs(counted["docs"] / 10_000 - 0.7) < 0.01
  report = stream.report(100)  # the closed-form count the training log shows agrees with the content
  assert counted["either"] < 50
  assert report["code"]["rows"] - counted["code"] + report["docs"]["rows"] - counted["docs"] == counted["either"]
  assert report["docs"]["epochs"] == pytest.approx(report["docs"]["rows"] / stream.num_rows(stream.names.index("docs")))


def test_curriculum_switches_the_proportions_at_the_configured_step(tokens, row_source):
  stream = make_stream(tokens, SEQ, 100, mixture=(("code", 0.9), ("docs", 0.1)),
                       curriculum=((50, (("code", 0.2), ("docs", 0.8))),))
  before = _source_counts(stream, row_source, range(50))
  after = _source_counts(stream, row_source, range(50, 100))
  assert abs(before["code"] / 5000 - 0.9) < 0.01
  assert abs(after["code"] / 5000 - 0.2) < 0.01
  first_after = _source_counts(stream, row_source, [50])
  assert abs(first_after["docs"] - 80) <= 2  # the very first batch of the stage already has its mix
  assert stream.report(50)["docs"]["rows"] == 500 and stream.report(100)["docs"]["rows"] == 500 + 4000
  assert abs(stream.report(100)["docs"]["rows"] - before["docs"] - after["docs"]) <= before["either"] + after["either"]


def test_temperature_and_fixed_epochs(tokens):
  pairs = {n: int((tokens.splits[n]["train"].lengths - 1).sum()) for n in tokens.sources}
  natural = make_stream(tokens, SEQ, 16)
  assert natural.mixture.weights[0][0] == pytest.approx(pairs["code"] / sum(pairs.values()))
  flat = make_stream(tokens, SEQ, 16, temperature=1000.0)
  assert flat.mixture.weights[0] == pytest.approx([0.5, 0.5], abs=0.01)
  epochs = make_stream(tokens, SEQ, 64, total_steps=1000, epochs=(("docs", 3.0),))
  assert epochs.report(1000)["docs"]["epochs"] == pytest.approx(3.0, abs=0.01)
  assert epochs.report(1000)["code"]["share"] == pytest.approx(1.0 - epochs.report(1000)["docs"]["share"])


def test_replay_takes_its_fraction_of_every_stage(tokens, row_source):
  # The mixture names only the new domain; replay adds the original at 30% of the rows, in every stage.
  stream = make_stream(tokens, SEQ, 100, mixture=(("code", 1.0),), curriculum=((20, (("code", 1.0),)),),
                       replay_sources=("docs",), replay_fraction=0.3)
  np.testing.assert_allclose(stream.mixture.weights, [[0.7, 0.3], [0.7, 0.3]])
  counted = _source_counts(stream, row_source, range(40))
  assert abs(counted["docs"] / 4000 - 0.3) < 0.01
  none = make_stream(tokens, SEQ, 100, replay_sources=("docs",), replay_fraction=0.0)  # size-proportional otherwise
  np.testing.assert_allclose(none.mixture.weights, [[1.0, 0.0]])
  assert none.report(10)["docs"]["rows"] == 0


@pytest.mark.parametrize("settings, message", [
    (dict(replay_sources=("wiki",)), r"data.replay_sources names 'wiki'"),
    (dict(replay_sources=("docs",), replay_fraction=1.5), r"data.replay_fraction must be in \[0, 1\]"),
    (dict(replay_sources=("docs", "code"), replay_fraction=0.5), r"the new-domain sources .* have no training rows"),
    (dict(replay_sources=("docs",), epochs=(("code", 0.01),)), r"data.replay_sources and data.mixture_epochs"),
])
def test_bad_replay_settings_fail_naming_the_key(tokens, settings, message):
  with pytest.raises(loader.MixtureError, match=message):
    make_stream(tokens, SEQ, 8, **settings)


def test_a_source_named_like_a_domain_aggregate_is_refused():
  with pytest.raises(loader.MixtureError, match=r"a source named 'new' clashes with the eval/new/loss aggregate"):
    loader.build_mixture(("docs", "new"), {"docs": 10, "new": 10}, {"docs": 1, "new": 1}, total_steps=10,
                         global_batch_size=2, replay_sources=("docs",))


def test_staged_stream_switches_row_length_at_each_stage(tokens):
  short = make_stream(tokens, SEQ, 8, mixture=(("code", 0.5), ("docs", 0.5)))
  long = make_stream(tokens, 4 * SEQ, 2, mixture=(("code", 0.5), ("docs", 0.5)))
  staged = loader.StagedStream([short, long], [0, 10])
  _equal(staged.batch(9), short.batch(9))
  _equal(staged.batch(10), long.batch(10))
  assert staged.batch(10)["inputs"].shape == (2, 4 * SEQ) and staged.global_batch_size == 2
  report = staged.report(20)  # 10 steps of each: shares are of tokens, equal halves here
  assert sum(e["rows"] for e in report.values()) == 10 * 8 + 10 * 2
  assert report["code"]["share"] == pytest.approx(0.5, abs=0.02)
  assert report["docs"]["epochs"] == pytest.approx(
      short.report(10)["docs"]["epochs"] + long.report(20)["docs"]["epochs"] - long.report(10)["docs"]["epochs"])
  it = loader.TrainIterator(staged, step=8)
  batches = [next(it) for _ in range(4)]
  resumed = loader.TrainIterator(staged)
  resumed.restore({"step": 10, "stream": staged.fingerprint()})
  _equal(next(resumed), batches[2])
  assert "stage from step 10 to 20: rows of 256 ids, 2 per batch" in staged.plan_table(20)
  with pytest.raises(ValueError, match="must begin at 0 and increase"):
    loader.StagedStream([short, long], [0, 0])


def test_packed_rows_never_cross_a_document_boundary(tokens):
  stream = make_stream(tokens, SEQ, 32)
  bos, eos = tokenizer_lib.BOS_ID, tokenizer_lib.EOS_ID
  fragments = 0
  for step in range(20):
    batch = stream.batch(step)
    assert set(batch) == set(loader.BATCH_KEYS)
    assert all(v.dtype == np.int32 and v.shape == (32, SEQ) for v in batch.values())
    for r in range(32):
      seg, pos = batch["segment_ids"][r], batch["positions"][r]
      inputs, targets, mask = batch["inputs"][r], batch["targets"][r], batch["loss_mask"][r]
      np.testing.assert_array_equal(mask, seg > 0)
      for s in np.unique(seg[seg > 0]):
        where = np.flatnonzero(seg == s)
        fragments += 1
        assert np.all(np.diff(where) == 1)  # a document fragment is contiguous ...
        np.testing.assert_array_equal(pos[where], np.arange(len(where)))  # ... with positions from 0
        np.testing.assert_array_equal(inputs[where][1:], targets[where][:-1])  # next-token pairs of one document
        assert bos not in inputs[where][1:] and eos not in targets[where][:-1]  # no second document inside it
      # The mask the model builds from segment ids: the token after a boundary sees only its own document.
      boundaries = np.flatnonzero(np.diff(seg) != 0) + 1
      for b in boundaries:
        if seg[b] > 0:
          assert pos[b] == 0
  assert fragments > 32 * 20  # rows hold several documents: packing is exercised


def test_every_pair_of_an_epoch_is_used_once(tokens, monkeypatch):
  split = tokens.splits["docs"]["train"]
  stream = make_stream(tokens, SEQ, 16, mixture=(("docs", 1.0),))
  docs = stream.names.index("docs")
  rows = stream.sources[docs]
  visited = []
  original = rows.row
  monkeypatch.setattr(rows, "row", lambda q: visited.append(q) or original(q))
  total = sum(int(stream.row(docs, j)["loss_mask"].sum()) for j in range(rows.num_rows))
  assert total == int((split.lengths - 1).sum())  # every next-token pair of the source, once
  assert sorted(visited) == list(range(rows.num_rows))  # the epoch is a permutation of the rows
  first_epoch = visited[:20]
  visited.clear()
  for j in range(20):
    stream.row(docs, rows.num_rows + j)
  assert visited != first_epoch  # the next epoch has its own order
  assert visited[:20] != list(range(20))  # and it is shuffled


@pytest.mark.parametrize("num_workers", [0, 2])
def test_restore_at_step_k_continues_exactly_as_an_uninterrupted_loader(tokens, num_workers):
  stream = make_stream(tokens, SEQ, 8)
  uninterrupted = loader.TrainIterator(stream, num_workers=num_workers)
  reference = [next(uninterrupted) for _ in range(14)]
  uninterrupted.close()
  states = {}
  it = loader.TrainIterator(stream, num_workers=num_workers)
  for k in range(10):
    states[k] = it.get_state()
    next(it)
  it.close()
  for k in (0, 3, 7, 9):
    restored = loader.TrainIterator(make_stream(tokens, SEQ, 8), num_workers=num_workers)  # a new process's loader
    restored.set_state(states[k])
    assert restored.step == k
    for expected in reference[k:k + 4]:
      _equal(next(restored), expected)
    restored.close()


def test_processes_read_disjoint_shares_of_the_same_global_batches_and_restore_elastically(tokens):
  stream = make_stream(tokens, SEQ, 8)
  whole = loader.TrainIterator(stream, process_count=1)
  for _ in range(5):
    next(whole)
  state = whole.state()  # saved by a 1-process run at step 5
  expected = [next(whole) for _ in range(3)]
  for count in (2, 4):
    parts = [loader.TrainIterator(stream, process_index=p, process_count=count) for p in range(count)]
    for part in parts:
      part.restore(state)  # restored under another process count
    for batch in expected:
      got = [next(part) for part in parts]
      assert all(len(g["inputs"]) == 8 // count for g in got)
      _equal(loader.concatenate_rows(got), batch)
  with pytest.raises(ValueError, match="8 rows per batch cannot be split over 3 processes"):
    loader.TrainIterator(stream, process_count=3)


def test_skips_to_any_step_without_reading_the_skipped_data(tokens, monkeypatch):
  stream = make_stream(tokens, SEQ, 8)
  reads = []
  for name in tokens.sources:
    split = tokens.splits[name]["train"]
    original = split.read
    monkeypatch.setattr(split, "read", lambda *a, _original=original: reads.append(a) or _original(*a))
  batch = stream.batch(1_000_000)
  assert batch["inputs"].shape == (8, SEQ)
  assert len(reads) <= 8 * 8  # a handful of document reads per row, whatever the step
  it = loader.TrainIterator(stream)
  it.restore({"step": 1_000_000, "stream": stream.fingerprint()})
  _equal(next(it), batch)


def test_restore_refuses_a_position_from_another_stream(tokens):
  it = loader.TrainIterator(make_stream(tokens, SEQ, 8))
  other = make_stream(tokens, SEQ, 8, mixture=(("code", 0.5), ("docs", 0.5)))
  with pytest.raises(ValueError, match="differs from this run's in weights"):
    it.restore({"step": 3, "stream": other.fingerprint()})


@pytest.mark.parametrize("settings, message", [
    (dict(mixture=(("code", -1.0), ("docs", 1.0))), r"data.mixture: the weight of 'code' must be a finite number >= 0"),
    (dict(mixture=(("code", 0.0), ("docs", 0.0))), r"data.mixture: the weights are all zero"),
    (dict(mixture=(("wiki", 1.0),)), r"data.mixture names source 'wiki', which the tokens do not have"),
    (dict(temperature=0.0), r"data.mixture_temperature must be > 0"),
    (dict(mixture=(("code", 1.0),), temperature=2.0), r"with explicit data.mixture weights leave it at 1.0"),
    (dict(epochs=(("docs", 1e6),)), r"data.mixture_epochs take .* of the run's rows"),
    (dict(curriculum=((5, (("code", 1.0),)), (5, (("docs", 1.0),)))), r"data.curriculum\[1\]: stage steps must increase"),
    (dict(epochs=(("docs", 0.5),), mixture=(("docs", 1.0), ("code", 1.0))), r"data.mixture gives a weight to \[.docs.\]"),
])
def test_bad_mixtures_fail_naming_the_key(tokens, settings, message):
  with pytest.raises(loader.MixtureError, match=message):
    make_stream(tokens, SEQ, 8, **settings)


def test_a_weighted_source_without_training_documents_is_refused(tokens):
  empty = tokens.splits["docs"]["train"]
  empty = type(empty)(empty.source, "train", (), np.zeros(0, np.int64), np.zeros(0, np.int64), empty.record_tokens,
                      empty.dtype)
  splits = {"code": tokens.splits["code"]["train"], "docs": empty}
  with pytest.raises(loader.MixtureError, match="source 'docs' has no training documents"):
    loader.make_stream(splits, seq_len=SEQ, global_batch_size=8, seed=0, pad_id=3, total_steps=10)
  with pytest.raises(loader.MixtureError, match="data.mixture: source 'docs' has no training documents"):
    loader.make_stream(splits, seq_len=SEQ, global_batch_size=8, seed=0, pad_id=3, total_steps=10,
                       mixture=(("code", 1.0), ("docs", 0.5)))
  only_code = loader.make_stream(splits, seq_len=SEQ, global_batch_size=8, seed=0, pad_id=3, total_steps=10,
                                 mixture=(("code", 1.0), ("docs", 0.0)))
  assert only_code.report(10)["docs"]["rows"] == 0


def test_allocation_is_exact_and_consistent_with_counts():
  weights = [0.05, 0.6, 0.1, 0.25, 0.0]
  source, index = loader.allocate(weights, np.arange(20_000))
  for s, w in enumerate(weights):
    mine = np.flatnonzero(source == s)
    assert abs(len(mine) - w * 20_000) <= 3
    np.testing.assert_array_equal(index[mine], np.arange(len(mine)))  # each source's rows in order, none skipped
  np.testing.assert_array_equal(loader.counts(weights, 20_000), np.bincount(source, minlength=5))
  for n in (0, 1, 7, 12_345):
    np.testing.assert_array_equal(loader.counts(weights, n), np.bincount(source[:n], minlength=5))


def test_evaluation_rows_are_every_validation_pair_and_a_fixed_sample(tokens):
  split = tokens.splits["code"]["validation"]
  every = loader.evaluation_rows(split, seq_len=SEQ, pad_id=3)
  assert every["loss_mask"].sum() == (split.lengths - 1).sum()
  sample = loader.evaluation_rows(split, seq_len=SEQ, pad_id=3, max_rows=10, seed=0)
  again = loader.evaluation_rows(split, seq_len=SEQ, pad_id=3, max_rows=10, seed=0)
  np.testing.assert_array_equal(sample["inputs"], again["inputs"])
  index = {r.tobytes(): i for i, r in enumerate(every["inputs"])}
  positions = sorted(index[r.tobytes()] for r in sample["inputs"])
  assert positions[-1] > len(every["inputs"]) // 2  # reaches beyond the first documents


def test_evaluation_batches_pad_the_last_batch(tokens):
  rows = loader.evaluation_rows(tokens.splits["code"]["validation"], seq_len=SEQ, pad_id=3, max_rows=10)
  batches = list(loader.evaluation_batches(rows, batch_size=4))
  assert [b["inputs"].shape for b in batches] == [(4, SEQ)] * 3
  assert batches[-1]["loss_mask"][2:].sum() == 0
  assert sum(b["loss_mask"].sum() for b in batches) == rows["loss_mask"].sum()
