import json

import numpy as np
import pytest

from data import corpus
from data import loader
from data import tokenizer as tokenizer_lib


def test_embedded_corpus_has_both_domains_split_by_document(documents):
  train, validation = documents
  for split in (train, validation):
    assert {d.source for d in split} == {"docs", "code"}
  assert not {d.id for d in train} & {d.id for d in validation}
  assert 0.02 < len(validation) / (len(train) + len(validation)) < 0.1
  again_train, again_validation = corpus.load("", validation_fraction=0.05, seed=0)
  assert [d.id for d in again_validation] == [d.id for d in validation]
  _, other_validation = corpus.load("", validation_fraction=0.05, seed=1)
  assert [d.id for d in other_validation] != [d.id for d in validation]


def test_user_jsonl_and_folder(tmp_path):
  path = tmp_path / "web.jsonl"
  path.write_text(json.dumps({"text": "hello"}) + "\n\n" + json.dumps({"text": "bye", "id": "b", "source": "s"}) + "\n")
  docs = list(corpus.user_documents(str(path)))
  assert [(d.id, d.source, d.text) for d in docs] == [("web:1", "web", "hello"), ("b", "s", "bye")]
  folder = tmp_path / "books"
  folder.mkdir()
  (folder / "a.txt").write_text("alpha")
  (folder / "skip.bin").write_text("beta")
  assert [(d.id, d.text) for d in corpus.user_documents(str(folder))] == [("a.txt", "alpha")]


def test_bad_user_data_names_file_and_line(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    list(corpus.user_documents(str(tmp_path / "missing.jsonl")))
  path = tmp_path / "bad.jsonl"
  path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
  with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with a string \"text\" field"):
    list(corpus.user_documents(str(path)))
  path.write_text("{not json\n")
  with pytest.raises(ValueError, match=r"bad.jsonl:1: not valid JSON"):
    list(corpus.user_documents(str(path)))


def test_tokenizer_round_trips_code_and_is_reused(tokenizer, small_documents, tmp_path):
  text = "def f(x):\n\tif x > 10:\n        return 'é ∑'  # comment\n"
  assert tokenizer.decode(tokenizer.encode(text)) == text
  assert tokenizer.vocab_size == 512
  assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 2, 3)
  directory = str(tmp_path / "tok")
  first = tokenizer_lib.train_or_load(small_documents[:50], 640, directory, 10000)
  meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
  assert meta["bos_id"] == 1 and meta["eos_id"] == 2 and meta["pad_id"] == 3 and meta["byte_fallback"]
  assert meta["sha256"] == tokenizer_lib.model_hash(directory) == first.sha256
  # A relaunch reuses the saved model even if given other documents.
  second = tokenizer_lib.train_or_load(small_documents[50:60], 640, directory, 10000)
  assert second.encode(text) == first.encode(text)
  with pytest.raises(ValueError, match="vocab_size 640 but config model.vocab_size is 700"):
    tokenizer_lib.train_or_load([], 700, directory, 10000)


def test_packed_rows_keep_documents_apart(examples):
  rows = loader.evaluation_rows(examples, seq_len=64, num_packing_bins=8, pad_id=3)
  assert set(rows) == set(loader.BATCH_KEYS)
  assert all(v.dtype == np.int32 and v.shape == rows["inputs"].shape for v in rows.values())
  # Nothing is dropped: every target token of every example is in exactly one row.
  assert rows["loss_mask"].sum() == sum(len(e["targets"]) for e in examples)
  for row in range(len(rows["inputs"])):
    seg, pos = rows["segment_ids"][row], rows["positions"][row]
    inputs, targets, mask = rows["inputs"][row], rows["targets"][row], rows["loss_mask"][row]
    np.testing.assert_array_equal(mask, seg > 0)
    for i in range(1, 64):
      if seg[i] == 0:
        continue
      if seg[i] == seg[i - 1]:
        assert pos[i] == pos[i - 1] + 1
        assert inputs[i] == targets[i - 1]  # next-token pairs within a document
      else:
        assert pos[i] == 0  # a new document restarts its positions
    assert pos[0] == 0


def test_every_document_starts_with_bos_and_ends_with_eos(small_documents, tokenizer):
  examples = loader.tokenize(small_documents[:3], tokenizer, seq_len=64)
  ids = np.concatenate([examples[0]["inputs"][:1]] + [e["targets"] for e in examples])
  assert ids[0] == tokenizer.bos_id
  assert (ids == tokenizer.eos_id).sum() == 3 and ids[-1] == tokenizer.eos_id


def test_processes_read_disjoint_shares_of_the_same_global_batches(examples):
  def batches(process_index, process_count, num_batches=3):
    streams = loader.process_streams(4, process_index, process_count)
    it = loader.train_iterator(loader.deal(examples, 4, streams), seq_len=64, num_packing_bins=4, seed=0,
                               global_batch_size=8, num_streams=4, pad_id=3)
    return [next(it) for _ in range(num_batches)]

  def documents(batch):
    return {tuple(r[r > 0][:8]) for r in batch["inputs"]}

  first, second = batches(0, 2), batches(1, 2)
  assert all(len(b["inputs"]) == 4 for b in first + second)
  assert not documents(first[0]) & documents(second[0])
  # Two processes' rows, one after the other, are exactly the batches of a single process, and of four.
  quarters = [batches(p, 4) for p in range(4)]
  for k, whole in enumerate(batches(0, 1)):
    for key in loader.BATCH_KEYS:
      np.testing.assert_array_equal(whole[key], np.concatenate([first[k][key], second[k][key]]))
      np.testing.assert_array_equal(whole[key], np.concatenate([q[k][key] for q in quarters]))
  assert list(loader.process_streams(8, 1, 2)) == [4, 5, 6, 7]
  with pytest.raises(ValueError, match="4 streams cannot be split over 3 processes"):
    loader.process_streams(4, 0, 3)


def test_iterator_state_restores_exact_position(examples):
  def make():
    return loader.train_iterator(loader.deal(examples, 2, range(2)), seq_len=64, num_packing_bins=4, seed=0,
                                 global_batch_size=4, num_streams=2, pad_id=3)

  it = make()
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  restored = make()
  restored.set_state(state)
  for batch in expected:
    got = next(restored)
    for key in loader.BATCH_KEYS:
      np.testing.assert_array_equal(got[key], batch[key])


def test_unigram_entropy():
  rows = {"targets": np.array([[0, 0, 1, 1, 5]]), "loss_mask": np.array([[1, 1, 1, 1, 0]])}
  assert loader.unigram_entropy(rows, vocab_size=8) == pytest.approx(np.log(2))


def test_capped_evaluation_rows_are_a_fixed_sample_of_all_rows(examples):
  examples = examples[:1000]
  every = loader.evaluation_rows(examples, seq_len=64, num_packing_bins=8, pad_id=3)
  sample = loader.evaluation_rows(examples, seq_len=64, num_packing_bins=8, pad_id=3, max_rows=10, seed=0)
  again = loader.evaluation_rows(examples, seq_len=64, num_packing_bins=8, pad_id=3, max_rows=10, seed=0)
  assert sample["inputs"].shape == (10, 64)
  np.testing.assert_array_equal(sample["inputs"], again["inputs"])
  row_index = {r.tobytes(): i for i, r in enumerate(every["inputs"])}
  positions = sorted(row_index[r.tobytes()] for r in sample["inputs"])  # KeyError if a row is not a real row
  # Not just the first rows: the sample reaches into the second half.
  assert positions[-1] > len(every["inputs"]) // 2


def test_evaluation_batches_pad_the_last_batch(examples):
  rows = loader.evaluation_rows(examples[:200], seq_len=64, num_packing_bins=8, pad_id=3, max_rows=10)
  batches = list(loader.evaluation_batches(rows, batch_size=4))
  assert [b["inputs"].shape for b in batches] == [(4, 64)] * 3
  assert batches[-1]["loss_mask"][2:].sum() == 0
  assert sum(b["loss_mask"].sum() for b in batches) == rows["loss_mask"].sum()
