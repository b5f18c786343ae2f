"""lm.long_context: loss by position over long documents, and the retrieval probe."""

import json

import numpy as np
import pytest

from lm import evaluate
from lm import load
from lm import long_context
from lm import sharding


@pytest.fixture(scope="module")
def run(trained_run):
  return load.load_run(trained_run, log=lambda _: None)


def _put(run):
  return lambda a: sharding.from_full_host_array(a, run.trainer.batch_sharding)


def test_rows_are_documents_from_their_first_id(tokens):
  split = tokens.splits["code"]["train"]
  rows = long_context.long_document_rows([split], seq_len=200, max_documents=5)
  assert rows["inputs"].shape == (5, 200)
  first_long = int(np.flatnonzero(split.lengths >= 201)[0])
  np.testing.assert_array_equal(rows["inputs"][0], split.read(first_long, 0, 200))
  np.testing.assert_array_equal(rows["targets"][0], split.read(first_long, 1, 201))
  np.testing.assert_array_equal(rows["positions"][3], np.arange(200))
  with pytest.raises(ValueError, match=r"no document has 1000001 ids .* \(the longest has"):
    long_context.long_document_rows([split], seq_len=1_000_000, max_documents=5)


def test_loss_by_position_averages_each_bucket(run, tokens):
  rows = long_context.long_document_rows([tokens.splits["code"]["validation"], tokens.splits["docs"]["validation"]],
                                         seq_len=128, max_documents=11)  # 11 rows: the last batch is padded
  result = long_context.loss_by_position(run.trainer.token_scores, run.params, rows, bucket=48, batch_size=8,
                                         put=_put(run))
  assert [(b["start"], b["stop"]) for b in result] == [(1, 48), (49, 96), (97, 128)]
  n = len(rows["inputs"])
  padded = {k: np.concatenate([v, np.zeros((16 - n, 128), np.int32)]) for k, v in rows.items()}
  log_probs = np.concatenate([np.asarray(run.trainer.token_scores(run.params, {k: _put(run)(v[i:i + 8])
                                                                             for k, v in padded.items()})[0])
                              for i in (0, 8)])[:n]
  assert result[1]["loss"] == pytest.approx(float(-log_probs[:, 48:96].mean()), rel=1e-6)
  assert result[2]["tokens"] == n * 32
  assert result[0]["loss"] == pytest.approx(float(-log_probs[:, :48].mean()), rel=1e-6)


def test_retrieval_requests_plant_the_key_at_the_depth(tokenizer, tokens):
  filler = long_context.filler_ids([tokens.splits["docs"]["train"]], 5000)
  for depth in (0.0, 0.5, 1.0):
    probes = long_context.retrieval_requests(tokenizer, filler, length=300, depth=depth, trials=3, seed=0)
    for request, control, key in probes:
      assert len(request.context) + len(request.continuation) - 1 == 300  # exactly one row
      assert len(control.context) == len(request.context) and control.continuation == request.continuation
      assert f"The secret number is {key}." not in tokenizer.decode(list(control.context[1:]))
      assert tokenizer.decode(list(request.continuation)).strip() == key
      text = tokenizer.decode(list(request.context[1:]))
      assert text.endswith(long_context.QUESTION.strip()) and f"The secret number is {key}." in text
      needle = tokenizer.encode(long_context.NEEDLE.format(key=key))
      context = list(request.context)
      start = next(i for i in range(len(context)) if context[i:i + len(needle)] == needle)
      room = len(context) - 1 - len(needle) - len(tokenizer.encode(long_context.QUESTION))
      assert (start - 1) == round(depth * room)  # after BOS and that share of the filler
  keys = {key for _, _, key in long_context.retrieval_requests(tokenizer, filler, 300, 0.5, 10, seed=1)}
  assert len(keys) == 10
  with pytest.raises(ValueError, match="leaves no room for filler"):
    long_context.retrieval_requests(tokenizer, filler, length=10, depth=0.5, trials=1, seed=0)


def test_retrieval_accuracy_counts_exact_greedy_keys(tokenizer, tokens):
  filler = long_context.filler_ids([tokens.splits["docs"]["train"]], 5000)

  def oracle(right):
    """Greedy gives every scored token (or none); log-probability -0.5 per token, -2 per token in a control
    row (one whose context does not hold the key, told by the planted number's ids at the row's start)."""
    def token_scores(params, batch):
      del params
      mask = np.asarray(batch["loss_mask"]) > 0
      log_probs = np.where(mask, -0.5, 0.0).astype(np.float32)
      for row in range(len(mask)):
        if mask[row].any() and control_row(np.asarray(batch["inputs"])[row], np.asarray(batch["targets"])[row],
                                           mask[row]):
          log_probs[row] *= 4
      return log_probs, mask if right else np.zeros_like(mask)
    return token_scores

  def control_row(inputs, targets, mask):
    answer = targets[mask]
    text = tokenizer.decode([int(t) for t in inputs])
    return tokenizer.decode([int(t) for t in answer]).strip() not in text

  for right, accuracy in ((True, 1.0), (False, 0.0)):
    result = long_context.retrieval_probe(oracle(right), None, tokenizer, filler, [200, 300], [0.0, 1.0], trials=4,
                                          batch_size=8, put=np.asarray)
    assert [(c["length"], c["depth"]) for c in result] == [(200, 0.0), (200, 1.0), (300, 0.0), (300, 1.0)]
    assert all(c["accuracy"] == accuracy and c["trials"] == 4 for c in result)
    assert all(c["key_log_likelihood"] < 0 for c in result)
    assert all(c["gain"] == pytest.approx(c["key_log_likelihood"] * -3.0) and c["gain"] > 0 for c in result)


def test_command_line_tasks(trained_run, tokens_dir, tmp_path, capsys):
  out = str(tmp_path / "position.json")
  assert evaluate.main(["--run", trained_run, "--task", "position_loss", "--data", tokens_dir, "--seq_len", "256",
                        "--bucket", "64", "--max_documents", "8", "--out", out]) == 0
  printed = capsys.readouterr().out
  assert "| 193-256 |" in printed
  with open(out) as f:
    assert len(json.load(f)["result"]) == 4
  assert evaluate.main(["--run", trained_run, "--task", "retrieval", "--data", tokens_dir, "--split", "train",
                        "--lengths", "128", "--depths", "0,1", "--trials", "3"]) == 0
  printed = capsys.readouterr().out
  assert "| 128 | 0.00 |" in printed and "| 128 | 1.00 |" in printed
  assert evaluate.main(["--run", trained_run, "--task", "retrieval", "--data", tokens_dir, "--depths", "2"]) == 1
  assert "--depths must lie in [0, 1]" in capsys.readouterr().err
