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
  first = tokenizer_lib.train_or_load(small_documents[:50], 640, directory, 10000, 0)
  meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
  assert meta["bos_id"] == 1 and meta["eos_id"] == 2 and meta["pad_id"] == 3 and meta["byte_fallback"]
  assert meta["sha256"] == tokenizer_lib.model_hash(directory) == first.sha256
  # A relaunch reuses the saved model even if given other documents.
  second = tokenizer_lib.train_or_load(small_documents[50:60], 640, directory, 10000, 0)
  assert second.encode(text) == first.encode(text)
  with pytest.raises(ValueError, match="vocab_size 640 but config model.vocab_size is 700"):
    tokenizer_lib.train_or_load([], 700, directory, 10000, 0)


def test_unigram_entropy():
  rows = {"targets": np.array([[0, 0, 1, 1, 5]]), "loss_mask": np.array([[1, 1, 1, 1, 0]])}
  assert loader.unigram_entropy(rows, vocab_size=8) == pytest.approx(np.log(2))
