"""Shared fixtures. Tests run on 8 simulated CPU devices, so every sharding path is exercised."""

import os
import subprocess
import sys

# Must be set before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Commands the tests start (python -m lm.launch, the sweep runner) find the host allocator's glibc tunables
# already set, as a launch does after its restart (lm/process.py), and so do not restart.
from lm import process  # noqa: E402  (imports no JAX)

os.environ["GLIBC_TUNABLES"] = process.needs_restart("reuse") or os.environ.get("GLIBC_TUNABLES", "")

import pytest  # noqa: E402

from configs import tiny  # noqa: E402
from data import corpus  # noqa: E402
from data import loader  # noqa: E402
from data import shards  # noqa: E402
from data import tokenizer as tokenizer_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def documents():
  """(train, validation) documents of the embedded corpus, split as the runs split it."""
  return corpus.load("", validation_fraction=0.05, seed=0)


@pytest.fixture(scope="session")
def small_documents(documents):
  """A few hundred training documents of both domains: enough to train a tokenizer fast."""
  train, _ = documents
  docs = [d for d in train if d.source == "docs"][:150]
  code = [d for d in train if d.source == "code"][:150]
  return docs + code


@pytest.fixture(scope="session")
def tokenizer_dir(small_documents, tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("tokenizer"))
  tokenizer_lib.train(small_documents, vocab_size=512, directory=directory, max_sentences=50000, seed=0)
  return directory


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
  return tokenizer_lib.load(tokenizer_dir)


@pytest.fixture(scope="session")
def tokens_dir(small_documents, tokenizer_dir, tmp_path_factory):
  """Token shards of the small documents (sources docs and code), 10% of them held out for validation."""
  directory = str(tmp_path_factory.mktemp("tokens") / "small")
  shards.write(small_documents, tokenizer_dir, directory, validation_fraction=0.1, split_seed=0, record_tokens=256,
               docs_per_shard=64, num_workers=2, chunk_docs=16, log=lambda _: None)
  return directory


@pytest.fixture(scope="session")
def tokens(tokens_dir):
  return shards.open_tokens(tokens_dir)


def make_stream(tokens, seq_len, global_batch_size, seed=0, total_steps=1000, **mixture):
  """The training Stream of opened `tokens` (both sources) with `mixture` settings (see loader.build_mixture)."""
  return loader.make_stream({n: tokens.splits[n]["train"] for n in tokens.sources}, seq_len=seq_len,
                            global_batch_size=global_batch_size, seed=seed, pad_id=tokenizer_lib.PAD_ID,
                            total_steps=total_steps, **mixture)


@pytest.fixture
def tiny_config(tmp_path):
  config = tiny.get_config()
  config.train.run_dir = str(tmp_path / "run")
  return config


@pytest.fixture
def train_iterator(tokens):
  """make(config) -> an endless iterator of the small token shards' training batches under `config`."""

  def make(config):
    return loader.TrainIterator(make_stream(tokens, config.data.seq_len, config.train.global_batch_size))

  return make


@pytest.fixture
def launch():
  """launch(run_dir, *overrides) runs `python -m lm.launch --config configs/tiny.py` on 8 CPU devices."""

  def run(run_dir, *overrides):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "lm.launch", "--config", "configs/tiny.py", f"--config.train.run_dir={run_dir}",
         *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

  return run


@pytest.fixture(scope="session")
def task_files(small_documents, tmp_path_factory):
  """task -> a generated JSONL file of 120 items in its layout, from the small (training) documents."""
  from lm import tasks  # pylint: disable=import-outside-toplevel
  return tasks.make_fixtures(small_documents, str(tmp_path_factory.mktemp("tasks")), items=120, seed=0)


@pytest.fixture(scope="session")
def trained_run(tokens_dir, task_files, tmp_path_factory):
  """A run directory of the tiny model trained 300 steps on the small token shards (one checkpoint, at the end);
  its final evaluation also scores the hellaswag and lambada fixtures."""
  from lm import train  # pylint: disable=import-outside-toplevel
  config = tiny.get_config()
  config.eval.tasks = (("hellaswag", task_files["hellaswag"]), ("lambada", task_files["lambada"]))
  config.eval.tasks_max_items = 40
  config.train.run_dir = str(tmp_path_factory.mktemp("trained") / "run")
  config.data.tokens_dir = tokens_dir
  config.data.seq_len = 128  # the task fixtures' requests fit a row
  config.train.steps, config.train.global_batch_size = 300, 8
  config.optim.warmup_steps = 20
  config.checkpoint.every_steps = config.eval.every_steps = config.eval.sample_every_steps = 300
  config.log.every_steps, config.log.noise_scale_every_steps = 100, 0
  train.run(config)
  return config.train.run_dir
