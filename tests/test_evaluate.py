"""Evaluation: bits per byte, task files, packed multiple-choice scoring, the CLI and in-training benchmarks."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from lm import evaluate
from lm import load
from lm import sharding
from lm import tasks
from lm import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_piece_byte_lengths_add_up_to_the_text_bytes(tokenizer, small_documents):
  lengths = evaluate.piece_byte_lengths(tokenizer)
  for doc in small_documents[:20] + small_documents[-20:]:
    assert lengths[tokenizer.encode(doc.text)].sum() == len(doc.text.encode("utf-8"))
  assert lengths[tokenizer.bos_id] == lengths[tokenizer.eos_id] == lengths[tokenizer.pad_id] == 0
  text = "naïve 数据 ☃"  # characters outside a 512-piece vocabulary fall back to byte pieces
  assert lengths[tokenizer.encode(text)].sum() == len(text.encode("utf-8"))


def test_each_task_layout_parses_and_bad_lines_are_skipped_with_their_first_line(tmp_path, task_files):
  for task, path in task_files.items():
    parsed = tasks.read(task, path)
    assert len(parsed.items) == 120 and not parsed.skipped
    assert all(0 <= item.answer < len(item.choices) for item in parsed.items)
  good = {"goal": "Boil water", "sol1": "Use a pot.", "sol2": "Use a sieve.", "label": 0}
  lines = [good, {"goal": "x", "sol1": "a", "label": 1}, good, {**good, "label": 2}, "not json", good,
           {"goal": "y", "sol2": "b", "label": 0}]
  path = tmp_path / "piqa.jsonl"
  path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
  parsed = tasks.read("piqa", str(path))
  assert [item.line for item in parsed.items] == [1, 3, 6]
  assert parsed.skipped == {"missing field 'sol2'": [1, 2], "missing field 'sol1'": [1, 7],
                            "answer index 2 out of range for 2 choices": [1, 4], "invalid JSON": [1, 5]}
  arc = tmp_path / "arc.jsonl"
  arc.write_text(json.dumps({"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                             "answerKey": "C"}) + "\n")
  with pytest.raises(ValueError, match=r"no usable arc_easy item: answerKey 'C' is not among .* first at line 1"):
    tasks.read("arc_easy", str(arc))


def test_hellaswag_and_arc_read_as_the_harness_formats_them(tmp_path):
  path = tmp_path / "hellaswag.jsonl"
  path.write_text(json.dumps({"activity_label": "Baking", "ctx_a": "She mixes flour.", "ctx_b": "then she",
                              "endings": ["bakes [title] it.", "b", "c", "d"], "label": "0"}) + "\n")
  item = tasks.read("hellaswag", str(path)).items[0]
  assert item.context == "Baking: She mixes flour. Then she" and item.choices[0] == "bakes. it." and item.answer == 0
  path = tmp_path / "arc.jsonl"
  path.write_text(json.dumps({"question": "Why?", "choices": {"text": ["x", "y", "z"], "label": ["1", "2", "3"]},
                              "answerKey": "3"}) + "\n")
  item = tasks.read("arc_challenge", str(path)).items[0]
  assert item.context == "Question: Why?\nAnswer:" and item.answer == 2


def test_fewshot_examples_come_from_other_items_with_a_fixed_seed(task_files):
  items = tasks.read("piqa", task_files["piqa"]).items
  first = tasks.fewshot_context(items[3], 3, items, shots=5, seed=0, same_file=True)
  assert first == tasks.fewshot_context(items[3], 3, items, shots=5, seed=0, same_file=True)
  assert first != tasks.fewshot_context(items[3], 3, items, shots=5, seed=1, same_file=True)
  examples = first.split(tasks.FEWSHOT_SEPARATOR)
  assert len(examples) == 6 and examples[-1] == items[3].context and tasks.solved(items[3]) not in examples
  assert all(example in [tasks.solved(i) for i in items] for example in examples[:-1])
  with pytest.raises(ValueError, match="need 5 other items"):
    tasks.fewshot_context(items[0], 0, items[:5], shots=5, seed=0, same_file=True)


def test_a_request_scores_the_tokens_past_the_context(tokenizer):
  request = evaluate.encode_pair(tokenizer, "Question: what is a list?\nAnswer: ", "a sequence")
  whole = tokenizer.encode("Question: what is a list?\nAnswer: a sequence")
  assert request.context[0] == tokenizer.bos_id and list(request.context[1:] + request.continuation) == whole
  assert tokenizer.decode(request.continuation).endswith("sequence")


def _random_init(tiny_config):
  mesh = sharding.make_mesh(tiny_config.mesh)
  trainer = train.build(tiny_config, mesh)
  params = trainer.init_state(jax.random.PRNGKey(1)).params
  return trainer, params, lambda a: sharding.from_full_host_array(a, trainer.batch_sharding)


def test_packed_scores_equal_one_request_per_row(tiny_config, tokenizer, task_files):
  tiny_config.data.seq_len = 256
  trainer, params, put = _random_init(tiny_config)
  seq_len = tiny_config.data.seq_len
  items = tasks.read("hellaswag", task_files["hellaswag"]).items[:16]
  requests = [evaluate.encode_pair(tokenizer, item.context, " " + choice) for item in items for choice in item.choices]
  requests = [r for r in requests if len(r.context) + len(r.continuation) <= seq_len + 1]
  assert len(requests) > 50
  rows, places = evaluate.pack(requests, seq_len, tokenizer.pad_id)
  assert len(rows["inputs"]) < 0.7 * len(requests)  # requests share rows
  assert rows["segment_ids"].max() >= 2
  kwargs = dict(seq_len=seq_len, batch_size=8, pad_id=tokenizer.pad_id, put=put)
  packed = evaluate.score_requests(trainer.token_scores, params, requests, **kwargs)
  alone = evaluate.score_requests(trainer.token_scores, params, requests, per_row=True, **kwargs)
  np.testing.assert_allclose([ll for ll, _ in packed], [ll for ll, _ in alone], rtol=0, atol=2e-5)
  assert [g for _, g in packed] == [g for _, g in alone]
  # The scores are the log-probabilities of the continuation under a forward pass of the request alone.
  r = requests[5]
  tokens = np.array(r.context + r.continuation)
  logits = trainer.model.apply({"params": params}, tokens[None, :-1], np.ones((1, len(tokens) - 1), np.int32),
                               np.arange(len(tokens) - 1)[None])[0][0]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  expected = sum(float(log_probs[i, tokens[i + 1]]) for i in range(len(r.context) - 1, len(tokens) - 1))
  assert packed[5][0] == pytest.approx(expected, abs=2e-5)


def test_requests_longer_than_a_row_are_truncated_from_the_left_or_skipped(tiny_config, tokenizer, tmp_path):
  trainer, params, put = _random_init(tiny_config)
  long_goal = " ".join(["the value of the list"] * 30)
  records = [{"goal": "Open a file", "sol1": "with open", "sol2": "with close", "label": 0},
             {"goal": long_goal, "sol1": "a", "sol2": "b", "label": 1},
             {"goal": "Read it", "sol1": "read", "sol2": "write", "label": 0},
             {"goal": long_goal, "sol1": "c", "sol2": "d", "label": 0}]
  path = tmp_path / "piqa.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  common = dict(tokenizer=tokenizer, token_scores=trainer.token_scores, params=params,
                seq_len=tiny_config.data.seq_len, batch_size=8, put=put)
  truncated = evaluate.evaluate_task("piqa", str(path), **common)
  assert truncated["items"] == 4 and truncated["truncated"] == [2, 2] and not truncated["skipped"]
  skipped = evaluate.evaluate_task("piqa", str(path), too_long="skip", **common)
  assert skipped["items"] == 2 and skipped["skipped"] == {"longer than the model's 64-token rows": [2, 2]}
  assert "skipped 2 (longer than the model's 64-token rows; first at line 2)" in evaluate.format_task(skipped)


def test_a_trained_model_prefers_the_corpus_continuation_and_random_init_is_near_chance(trained_run, task_files,
                                                                                        tiny_config):
  run = load.load_run(trained_run)
  put = lambda a: sharding.from_full_host_array(a, run.trainer.batch_sharding)  # noqa: E731
  common = dict(tokenizer=run.tokenizer, token_scores=run.trainer.token_scores, seq_len=run.config.data.seq_len,
                batch_size=8, put=put)
  tiny_config.data.seq_len = 128
  # At initialisation the logits are nearly flat, so one model's accuracy is noisy (the model of seed 1 scores
  # piqa 0.42; with another tokenizer one scored 0.17 from chance). Chance is checked on the mean of four models.
  trainer, first, _ = _random_init(tiny_config)  # seed 1
  random_params = [first] + [trainer.init_state(jax.random.PRNGKey(seed)).params for seed in (2, 3, 4)]
  for task in ("hellaswag", "arc_easy", "piqa"):
    trained = evaluate.evaluate_task(task, task_files[task], params=run.params, **common)
    at_init = [evaluate.evaluate_task(task, task_files[task], params=p, **common) for p in random_params]
    assert trained["items"] == 120 and trained["acc"] > trained["chance"] + 0.15, trained
    mean_acc = float(np.mean([result["acc"] for result in at_init]))
    assert abs(mean_acc - at_init[0]["chance"]) < 0.15, (mean_acc, at_init)


def test_training_logs_benchmarks_and_bits_per_byte_in_the_metrics_stream(trained_run):
  with open(os.path.join(trained_run, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  final = {k: v for r in records if r.get("step") == 300 for k, v in r.items()}
  assert final["eval/hellaswag/items"] == 40 and 0.0 <= final["eval/hellaswag/acc"] <= 1.0
  assert "eval/hellaswag/acc_norm" in final and final["eval/lambada/perplexity"] > 1.0
  assert 0.5 < final["eval/bits_per_byte"] < 4.0 and "eval/code/bits_per_byte" in final


def _cli(*args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "lm.evaluate", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)


def test_cli_reports_perplexity_per_source_and_task_scores(trained_run, tokens_dir, task_files, tmp_path):
  out = tmp_path / "ppl.json"
  result = _cli("--run", trained_run, "--task", "perplexity", "--data", tokens_dir, "--out", str(out))
  assert result.returncode == 0, result.stderr
  saved = json.loads(out.read_text())
  assert saved["step"] == 300 and set(saved["result"]) == {"code", "docs", "all"}
  with open(os.path.join(trained_run, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  final_loss = [r["eval/loss"] for r in logged if "eval/loss" in r][-1]
  assert saved["result"]["all"]["loss"] == pytest.approx(final_loss, rel=0.05)  # all rows vs the training sample
  for name in ("code", "docs"):
    r = saved["result"][name]
    assert r["bits_per_byte"] == pytest.approx(r["loss"] * r["tokens"] / np.log(2) / r["bytes"])
  assert "bits/byte" in result.stdout and "docs" in result.stdout
  bad = tmp_path / "piqa.jsonl"
  bad.write_text(open(task_files["piqa"]).read() + '{"goal": "x", "sol1": "y", "label": 0}\n')
  result = _cli("--run", trained_run, "--task", "piqa", "--data", str(bad), "--shots", "2", "--max_items", "0")
  assert result.returncode == 0, result.stderr
  assert "piqa (2-shot, 120 items" in result.stdout and "acc_norm" in result.stdout
  assert "skipped 1 (missing field 'sol2'; first at line 121)" in result.stdout
  missing = _cli("--run", str(tmp_path / "nowhere"), "--task", "piqa", "--data", task_files["piqa"])
  assert missing.returncode == 1 and "is not a run directory" in missing.stderr and "Traceback" not in missing.stderr


def test_domain_losses_are_token_weighted_over_original_and_new_sources():
  results = {"docs": {"loss": 2.0, "tokens": 100.0}, "wiki": {"loss": 4.0, "tokens": 300.0},
             "code": {"loss": 1.0, "tokens": 50.0}}
  assert evaluate.domain_losses(results, ("docs", "wiki")) == {"original": 3.5, "new": 1.0}
  assert evaluate.domain_losses(results, ()) == {}
