"""Shared fixtures. Tests run on 8 simulated CPU devices, so every sharding path is exercised."""

import os
import subprocess
import sys

# Must be set before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from configs import tiny  # noqa: E402
from data import corpus  # noqa: E402
from data import loader  # noqa: E402
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
def tokenizer(small_documents, tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("tokenizer"))
  return tokenizer_lib.train(small_documents, vocab_size=512, directory=directory, max_sentences=50000)


@pytest.fixture(scope="session")
def examples(small_documents, tokenizer):
  return loader.tokenize(small_documents, tokenizer, seq_len=64)


@pytest.fixture
def tiny_config(tmp_path):
  config = tiny.get_config()
  config.train.run_dir = str(tmp_path / "run")
  return config


@pytest.fixture
def train_iterator(examples):
  """make(config) -> an endless iterator of the session examples' training batches under `config`."""

  def make(config):
    num_streams = config.data.num_streams
    return loader.train_iterator(loader.deal(examples, num_streams, range(num_streams)), seq_len=config.data.seq_len,
                                 num_packing_bins=8, seed=0, global_batch_size=config.train.global_batch_size,
                                 num_streams=num_streams,
                                 pad_id=tokenizer_lib.PAD_ID)

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
