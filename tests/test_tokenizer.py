"""Tokenizer settings, even sampling across sources, the fertility report and `python -m data.tokenizer`."""

import json
import os
import random
import re
import subprocess
import sys

import ml_collections
import pytest

from configs.tokenize import base as tokenize_base
from data import tokenizer as tokenizer_lib
from data.corpus import Document

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA_PIECES = dict(bos_piece="<|begin_of_text|>", eos_piece="<|end_of_text|>", pad_piece="<|pad|>")


@pytest.fixture(scope="module")
def lines(small_documents):
  """A few thousand shuffled non-empty lines of both domains: a 512-piece model trains on them in well under 1s."""
  all_lines = [line for doc in small_documents for line in doc.text.split("\n") if line.strip()]
  random.Random(0).shuffle(all_lines)
  return all_lines[:6000]


def _config(tmp_path, inputs, **tokenizer):
  config = tokenize_base.get_config()
  config.inputs = tuple(inputs)
  config.tokenizer.output_dir = str(tmp_path / "tok")
  config.tokenizer.vocab_size = 512
  config.tokenizer.sentences_per_source = 3000
  config.tokenizer.fertility_documents = 5
  for key, value in tokenizer.items():
    config.tokenizer[key] = value
  return config


def _synthetic(source, num_docs, lines_per_doc):
  return [Document(id=f"{source}-{i}", source=source,
                   text="\n".join(f"{source} {i} {j}" for j in range(lines_per_doc)) + "\n\n")
          for i in range(num_docs)]


@pytest.mark.parametrize("fields, message", [
    (dict(model_type="wordpiece"), "tokenizer.model_type must be 'bpe' or 'unigram', got 'wordpiece'"),
    (dict(vocab_size=262), "tokenizer.vocab_size 262 is too small: the special, user-defined and byte pieces alone "
                           "take 262"),
    (dict(eos_piece="<|begin_of_text|>"), "tokenizer.eos_piece '<|begin_of_text|>' is already tokenizer.bos_piece"),
    (dict(user_defined_symbols=("\n", "<mask>")), "tokenizer.user_defined_symbols '<mask>' is already the <mask>"),
    (dict(pad_piece=""), "tokenizer.pad_piece must be a non-empty string"),
    (dict(user_defined_symbols="<|fim|>"), "tokenizer.user_defined_symbols must be a tuple of strings"),
    (dict(byte_fallback=1), "tokenizer.byte_fallback must be True or False"),
])
def test_bad_settings_name_their_key(fields, message):
  # A fresh ConfigDict: the base config's type checks would refuse some of these values before we see them.
  tok = ml_collections.ConfigDict({**tokenize_base.get_config().tokenizer.to_dict(), **fields})
  with pytest.raises(ValueError, match=re.escape(message)):
    tokenizer_lib.Settings.from_config(tok)


def test_default_settings_are_those_of_train_and_base_config_is_valid():
  settings = tokenizer_lib.Settings(vocab_size=512)
  assert (settings.model_type, settings.byte_fallback, settings.split_digits) == ("bpe", True, True)
  assert (settings.bos_piece, settings.eos_piece, settings.pad_piece) == ("<s>", "</s>", "<pad>")
  assert settings.user_defined_symbols == ("\n",) and settings.fixed_pieces == 5 + 1 + 256
  assert tokenizer_lib.Settings.from_config(tokenize_base.get_config().tokenizer).bos_piece == "<|begin_of_text|>"


def test_special_pieces_user_symbols_digits_and_byte_fallback(lines, tmp_path):
  settings = tokenizer_lib.Settings(vocab_size=512, user_defined_symbols=("\n", "<|fim_prefix|>"), **LLAMA_PIECES)
  tok = tokenizer_lib.train_lines(lines, settings, str(tmp_path))
  sp = tok.processor
  assert [sp.piece_to_id(p) for p in ("<unk>", *LLAMA_PIECES.values(), "<mask>", "\n", "<|fim_prefix|>")] == [
      0, 1, 2, 3, 4, 5, 6]
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id) == (1, 2, 3, 4)
  assert all(sp.is_control(i) for i in (1, 2, 3, 4))
  # Control pieces are never produced from text: a document cannot forge a document boundary.
  assert not {1, 2, 3, 4} & set(tok.encode("<|begin_of_text|>x<|end_of_text|><mask>"))
  # A user-defined symbol is one piece wherever it occurs.
  ids = tok.encode("a<|fim_prefix|>def f():\n")
  assert 6 in ids and 5 in ids and tok.decode(ids) == "a<|fim_prefix|>def f():\n"
  assert [sp.id_to_piece(i) for i in tok.encode("12345")] == list("12345")
  # An unseen character becomes its UTF-8 bytes, never <unk>, and round-trips.
  text = "x = '\u4e2d\u6587'\n"
  ids = tok.encode(text)
  assert 0 not in ids and sum(sp.is_byte(i) for i in ids) == 6 and tok.decode(ids) == text
  meta = json.loads((tmp_path / "tokenizer.json").read_text())
  assert meta == {
      "vocab_size": 512, "model_type": "bpe", "byte_fallback": True, "split_digits": True,
      "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": 3, "mask_id": 4,
      "unk_piece": "<unk>", **LLAMA_PIECES, "mask_piece": "<mask>",
      "user_defined_symbols": ["\n", "<|fim_prefix|>"], "sha256": tokenizer_lib.model_hash(str(tmp_path))}


def test_unigram_no_digit_split_no_byte_fallback(lines, tmp_path):
  number_lines = [f"x = {n}" for n in [12345] * 300 + list(range(1000, 1300))]
  settings = tokenizer_lib.Settings(vocab_size=512, model_type="unigram", byte_fallback=False, split_digits=False)
  tok = tokenizer_lib.train_lines(lines + number_lines, settings, str(tmp_path))
  sp = tok.processor
  assert json.loads((tmp_path / "tokenizer.json").read_text())["model_type"] == "unigram"
  # The model proto's scores tell the algorithms apart: BPE scores are merge ranks (-0, -1, ...),
  # unigram scores are log-probabilities.
  ordinary = range(tokenizer_lib.FIRST_ORDINARY_ID + 1, 512)
  assert any(sp.get_score(i) != int(sp.get_score(i)) for i in ordinary)
  assert len(tok.encode("12345")) < 5  # digits merge when not split
  assert not any(sp.is_byte(i) for i in range(512))
  assert tok.encode("\u4e2d") == [0]  # without byte fallback an unseen character is <unk>
  bpe = tokenizer_lib.train_lines(lines, tokenizer_lib.Settings(vocab_size=512), str(tmp_path / "bpe"))
  assert all(bpe.processor.get_score(i) == int(bpe.processor.get_score(i)) for i in ordinary)


def test_vocab_size_the_lines_cannot_fill_is_a_value_error(tmp_path):
  with pytest.raises(ValueError, match="tokenizer.vocab_size 2000 is too large for the training lines"):
    tokenizer_lib.train_lines(["the cat sat on the mat"] * 50, tokenizer_lib.Settings(
        vocab_size=2000, model_type="unigram"), str(tmp_path))
  many_chars = ["".join(chr(0x4e00 + i + j) for j in range(20)) for i in range(0, 600, 5)]
  with pytest.raises(ValueError, match="tokenizer.vocab_size 300 is too small for the training lines"):
    tokenizer_lib.train_lines(many_chars, tokenizer_lib.Settings(vocab_size=300), str(tmp_path))


def test_model_hash_follows_the_model(lines, tmp_path):
  directory = str(tmp_path)
  first = tokenizer_lib.train_lines(lines, tokenizer_lib.Settings(vocab_size=512), directory)
  first_hash = tokenizer_lib.model_hash(directory)
  assert first.sha256 == first_hash == json.loads((tmp_path / "tokenizer.json").read_text())["sha256"]
  assert len(first_hash) == 64 and tokenizer_lib.load(directory).sha256 == first_hash
  second = tokenizer_lib.train_lines(lines, tokenizer_lib.Settings(vocab_size=600), directory)
  assert second.sha256 == tokenizer_lib.model_hash(directory) != first_hash
  # Retraining the same lines with the same settings gives the same model.
  again = tokenizer_lib.train_lines(lines, tokenizer_lib.Settings(vocab_size=600), str(tmp_path / "again"))
  assert again.sha256 == second.sha256
  (tmp_path / "spm.model").write_bytes(b"another model")
  with pytest.raises(ValueError, match="spm.model is not the model tokenizer.json describes"):
    tokenizer_lib.load(directory)


def _train_in_a_new_process(directory, max_sentences, seed):
  """The sha256 of a 512-piece model trained by `tokenizer.train` on the first 40 documents of each domain of the
  embedded corpus, in a process of its own (an unseeded sample differs between processes, not within one)."""
  script = ("import sys\nfrom data import corpus, tokenizer\n"
            "train, _ = corpus.load('', validation_fraction=0.05, seed=0)\n"
            "docs = [d for d in train if d.source == 'docs'][:40] + [d for d in train if d.source == 'code'][:40]\n"
            "print(tokenizer.train(docs, 512, sys.argv[1], int(sys.argv[2]), int(sys.argv[3])).sha256)\n")
  result = subprocess.run([sys.executable, "-c", script, directory, str(max_sentences), str(seed)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  return result.stdout.split()[-1]


def test_a_sampled_tokenizer_is_the_same_in_every_process_for_one_seed(tmp_path):
  # 4,000 of the documents' 29,000 lines: a relaunch, or another host, must train the very same tokenizer.
  first, second, other_seed = (_train_in_a_new_process(str(tmp_path / name), 4000, seed)
                               for name, seed in (("a", 0), ("b", 0), ("c", 1)))
  assert first == second != other_seed


def test_the_line_sample_of_train_is_uniform_and_keeps_every_line_when_they_fit():
  documents = _synthetic("one", 20, 5)  # 100 non-empty lines

  def sample(max_lines, seed):  # as `tokenizer.train` draws it: no document held out
    sampler = tokenizer_lib._SourceSampler("", max_lines, max_held_out=0, seed=seed)  # pylint: disable=protected-access
    for doc in documents:
      sampler.add(doc)
    return sampler.finish().sampled

  lines = [line for doc in documents for line in doc.text.split("\n") if line.strip()]
  assert sorted(sample(100, seed=0)) == sorted(lines)
  kept = sample(10, seed=0)
  assert len(set(kept)) == 10 and set(kept) <= set(lines) and kept == sample(10, seed=0)
  counts = {line: 0 for line in lines}
  for seed in range(2000):
    for line in sample(10, seed):
      counts[line] += 1
  # Each line is kept with probability 0.1: 200 of 2,000 draws, with a binomial standard deviation of 13.4.
  assert 140 < min(counts.values()) and max(counts.values()) < 260, counts


def test_sources_give_the_same_number_of_lines_whatever_their_size():
  small, big = _synthetic("small", 10, 10), _synthetic("big", 200, 10)  # 100 and 2000 non-empty lines
  documents = big[:100] + small + big[100:]
  sample = tokenizer_lib.sample_lines(iter(documents), sentences_per_source=50, fertility_documents=2, seed=0)
  assert list(sample.sources) == ["big", "small"]
  assert [len(s.sampled) for s in sample.sources.values()] == [50, 50]
  assert [(s.documents, s.lines, len(s.held_out)) for s in sample.sources.values()] == [(200, 1980, 2), (10, 80, 2)]
  for name, source in sample.sources.items():
    held = {doc.id for doc in source.held_out}
    assert all(line.startswith(name) and f"{name}-{line.split()[1]}" not in held for line in source.sampled)
    assert len(set(source.sampled)) == len(source.sampled)
  # The held-out documents depend on the ids alone, the sample on the seed.
  shuffled = documents[:]
  random.Random(1).shuffle(shuffled)
  other_order = tokenizer_lib.sample_lines(shuffled, 50, 2, seed=0)
  assert other_order.held_out() == sample.held_out()
  assert tokenizer_lib.sample_lines(documents, 50, 2, seed=0).sources == sample.sources
  assert tokenizer_lib.sample_lines(documents, 50, 2, seed=1).held_out() != sample.held_out()
  # A source with fewer lines than asked gives all it has.
  sample = tokenizer_lib.sample_lines(documents, 500, 2, seed=0)
  assert [len(s.sampled) for s in sample.sources.values()] == [500, 80]


def test_sample_keeps_training_lines_from_small_sources_and_names_bad_sources():
  docs = _synthetic("a", 3, 4) + _synthetic("b", 6, 4) + _synthetic("c", 2, 1)
  sample = tokenizer_lib.sample_lines(docs, 100, fertility_documents=10, seed=0, sources=("a", "b"))
  # At most half of a source is held out, so a small source still trains.
  assert {n: (len(s.held_out), len(s.sampled)) for n, s in sample.sources.items()} == {"a": (1, 8), "b": (3, 12)}
  assert sample.skipped == {"c": 2}
  assert sorted(sample.lines()) == sorted(sample.sources["a"].sampled + sample.sources["b"].sampled)
  with pytest.raises(ValueError, match=r"sources names 'd', 'e', which no input document has \(sources found: a, b, c"):
    tokenizer_lib.sample_lines(docs, 100, 1, 0, sources=("a", "d", "e"))
  blank = [Document(id="z", source="blank", text=" \n\t\n")]
  with pytest.raises(ValueError, match="source 'blank' has no non-empty line to train on"):
    tokenizer_lib.sample_lines(docs + blank, 100, 1, 0)
  with pytest.raises(ValueError, match="the inputs hold no documents"):
    tokenizer_lib.sample_lines([], 100, 1, 0)


def test_fertility_counts_by_hand(tokenizer):
  texts = {"prose": ["hello world\n", "the end \u4e2d"], "code": ["x = 1"], "empty": []}
  byte_ids = {i for i in range(tokenizer.vocab_size) if tokenizer.processor.is_byte(i)}
  assert tokenizer.processor.piece_to_id("\u4e2d") == 0  # not a piece of the 512-piece model: three byte tokens
  report = tokenizer_lib.fertility(tokenizer, {name: [Document(id=f"{name}{i}", source=name, text=t)
                                                      for i, t in enumerate(ts)] for name, ts in texts.items()})
  prose_tokens = len(tokenizer.encode("hello world\n")) + len(tokenizer.encode("the end \u4e2d"))
  prose = report["sources"]["prose"]
  assert (prose["documents"], prose["words"], prose["bytes"], prose["tokens"]) == (2, 5, 12 + 11, prose_tokens)
  assert prose["byte_fallback_tokens"] == 3 == len(byte_ids & set(tokenizer.encode("the end \u4e2d")))
  assert prose["tokens_per_word"] == pytest.approx(prose_tokens / 5)
  assert prose["bytes_per_token"] == pytest.approx(23 / prose_tokens)
  assert prose["byte_fallback_share"] == pytest.approx(3 / prose_tokens)
  code_tokens = len(tokenizer.encode("x = 1"))
  assert report["sources"]["code"]["tokens_per_word"] == pytest.approx(code_tokens / 3)
  assert report["sources"]["empty"] == {"documents": 0, "words": 0, "bytes": 0, "tokens": 0,
                                        "byte_fallback_tokens": 0, "tokens_per_word": None,
                                        "bytes_per_token": None, "byte_fallback_share": None}
  assert report["all"]["tokens"] == prose_tokens + code_tokens and report["all"]["words"] == 8
  assert report["all"]["tokens_per_word"] == pytest.approx((prose_tokens + code_tokens) / 8)
  table = tokenizer_lib.format_fertility(report).splitlines()
  assert table[0].split() == ["source", "docs", "words", "tokens", "tokens/word", "bytes/token", "byte-fallback",
                              "%"]
  assert [row.split()[0] for row in table[1:]] == ["prose", "code", "empty", "all"]
  assert len({len(row) for row in table}) == 1  # aligned
  assert table[1].split()[1:5] == ["2", "5", str(prose_tokens), f"{prose_tokens / 5:.3f}"]
  assert table[3].split()[4:] == ["-", "-", "-"]


def _write_jsonl(path, documents_and_sources):
  with open(path, "w", encoding="utf-8") as f:
    for doc, source in documents_and_sources:
      f.write(json.dumps({"id": doc.id, "source": source, "text": doc.text}) + "\n")


def _cli(*overrides):
  return subprocess.run([sys.executable, "-m", "data.tokenizer", "--config", "configs/tokenize/base.py", *overrides],
                        cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_trains_and_reports_on_two_sources(small_documents, tmp_path):
  path = tmp_path / "corpus.jsonl"
  _write_jsonl(path, [(d, "prose") for d in small_documents if d.source == "docs"][:60]
               + [(d, "python") for d in small_documents if d.source == "code"][:40])
  out = tmp_path / "tok"
  result = _cli(f"--config.inputs=('{path}',)", f"--config.tokenizer.output_dir={out}",
                "--config.tokenizer.vocab_size=512", "--config.tokenizer.sentences_per_source=2000",
                "--config.tokenizer.fertility_documents=4", "--config.tokenizer.model_type=unigram")
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(out)) == ["fertility.json", "spm.model", "tokenizer.json"]
  meta = json.loads((out / "tokenizer.json").read_text())
  assert meta["model_type"] == "unigram" and meta["bos_piece"] == "<|begin_of_text|>"
  report = json.loads((out / "fertility.json").read_text())
  assert report["sha256"] == meta["sha256"] == tokenizer_lib.model_hash(str(out))
  assert set(report["sources"]) == {"prose", "python"} == set(report["sample"])
  assert [report["sample"][s]["sampled_lines"] for s in ("prose", "python")] == [2000, 2000]
  assert all(report["sources"][s]["documents"] == report["sample"][s]["held_out_documents"] == 4
             for s in ("prose", "python"))
  stdout = result.stdout
  assert "training a unigram tokenizer of 512 pieces on 4000 lines" in stdout
  header = next(line for line in stdout.splitlines() if line.startswith("source  docs"))
  assert header.split()[-3:] == ["bytes/token", "byte-fallback", "%"]
  assert all(any(line.startswith(name) for line in stdout.splitlines()) for name in ("prose", "python", "all"))
  assert f"written to {out}" in stdout


@pytest.mark.parametrize("override, message", [
    ("--config.sources=('docs', 'nope')", "error: sources names 'nope', which no input document has"),
    ("--config.tokenizer.model_type=wordpiece", "error: tokenizer.model_type must be 'bpe' or 'unigram', got "
                                                "'wordpiece'"),
    ("--config.inputs=('/nonexistent/corpus.jsonl',)", "error: data path does not exist: '/nonexistent/corpus.jsonl'"),
])
def test_cli_errors_exit_2_with_one_line(tmp_path, override, message):
  path = tmp_path / "corpus.jsonl"
  _write_jsonl(path, [(doc, "docs") for doc in _synthetic("docs", 3, 3)])
  result = _cli(f"--config.inputs=('{path}',)", f"--config.tokenizer.output_dir={tmp_path / 'tok'}", override)
  assert result.returncode == 2
  assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
  assert not (tmp_path / "tok").exists()


def test_importing_the_module_defines_no_flags():
  code = "import data.tokenizer; from absl import flags; print('config' in flags.FLAGS)"
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert result.stdout.strip() == "False", result.stderr
