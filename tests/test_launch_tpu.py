"""launch_tpu.sh (dry runs and argument checks; no gcloud, no network) and experiments/slurm_gpu.sbatch."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "launch_tpu.sh")
V5P = ["--project", "my-proj", "--zone", "us-east5-a", "--accelerator", "v5p-64", "--name", "llm-v5p"]
LLAMA = ["--config", "configs/llama2_7b.py", "--config.train.run_dir=gs://b/runs/7b"]
LOCATION = ["--zone=us-east5-a", "--project=my-proj"]


@pytest.fixture
def launch_tpu(tmp_path):
  """launch_tpu(*args) runs launch_tpu.sh from the repository root with a `gcloud` that only records calls."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "gcloud_calls"
  fake = bin_dir / "gcloud"
  fake.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(calls))}\nexit 1\n')
  fake.chmod(0o755)

  def run(*args):
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", SCRIPT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert not calls.exists(), f"gcloud was called: {calls.read_text()}"
    return result

  return run


def commands(stdout):
  """The printed commands, each split into its words; every stdout line must be one."""
  lines = stdout.splitlines()
  assert lines and all(line.startswith("+ ") for line in lines), stdout
  return [shlex.split(line[2:]) for line in lines]


def option(words, name):
  """The value of `name VALUE` or `name=VALUE` in a split command."""
  for i, word in enumerate(words):
    if word == name:
      return words[i + 1]
    if word.startswith(name + "="):
      return word[len(name) + 1:]
  raise AssertionError(f"{name} not in {words}")


def jax_pin():
  with open(os.path.join(REPO, "requirements.txt")) as f:
    return re.search(r"^jax==(\S+)", f.read(), re.M).group(1)


def test_dry_run_of_a_v5p_64_job(launch_tpu):
  result = launch_tpu(*V5P, "--dry-run", "--", *LLAMA)
  assert result.returncode == 0, result.stderr
  create, archive, scp, install, train = commands(result.stdout)

  assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "llm-v5p", *LOCATION,
                    "--node-id=llm-v5p", "--accelerator-type=v5p-64", "--runtime-version=v2-alpha-tpuv5"]
  assert "would wait until queued resource llm-v5p is ACTIVE" in result.stderr

  assert archive[:2] == ["git", "archive"] and archive[-1] == "HEAD"
  tarball = option(archive, "--output")
  assert tarball.endswith("lm-llm-v5p.tar.gz")

  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, "llm-v5p:lm.tar.gz", *LOCATION,
                 "--worker=all"]

  assert install[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "llm-v5p", *LOCATION, "--worker=all"]
  assert install[9] == "--command" and len(install) == 11
  setup = install[10]
  for step in ("tar -xzf ~/lm.tar.gz -C ~/lm", "cd ~/lm", '"$py" -m venv .venv',
               ".venv/bin/pip install -q -r requirements.txt",
               f'.venv/bin/pip install -q "jax[tpu]=={jax_pin()}" -f '
               "https://storage.googleapis.com/jax-releases/libtpu_releases.html"):
    assert step in setup, step
  assert setup.startswith("set -euo pipefail; ")

  assert train[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "llm-v5p", *LOCATION, "--worker=all"]
  assert train[9] == "--command" and len(train) == 11
  assert train[10] == ("set -o pipefail; cd ~/lm && PYTHONUNBUFFERED=1 .venv/bin/python -m lm.launch --distributed=on "
                       "--config configs/llama2_7b.py --config.train.run_dir=gs://b/runs/7b 2>&1 | tee ~/lm/train.log")
  remote = shlex.split(train[10])
  assert remote[remote.index("lm.launch") + 1:remote.index("2>&1")] == ["--distributed=on", *LLAMA]


@pytest.mark.parametrize("accelerator,runtime", [("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v6e-8", "v2-alpha-tpuv6e"),
                                                 ("v4-8", "tpu-ubuntu2204-base")])
def test_default_runtime_version_follows_the_accelerator(launch_tpu, accelerator, runtime):
  args = ["--project", "p", "--zone", "z", "--accelerator", accelerator, "--name", "n", "--dry-run", "--", *LLAMA]
  result = launch_tpu(*args)
  assert result.returncode == 0, result.stderr
  assert option(commands(result.stdout)[0], "--runtime-version") == runtime


def test_version_and_spot_options(launch_tpu):
  result = launch_tpu(*V5P, "--version=my-runtime", "--spot", "--dry-run", "--", *LLAMA)
  assert result.returncode == 0, result.stderr
  create = commands(result.stdout)[0]
  assert option(create, "--runtime-version") == "my-runtime" and "--spot" in create


def test_awkward_arguments_reach_lm_launch_unchanged(launch_tpu):
  awkward = ["--config.train.run_dir=gs://b/my runs/\"x\" 'y' $HOME; echo hacked", "$(touch /tmp/x)", "", "a\\b"]
  result = launch_tpu(*V5P, "--dry-run", "--", *LLAMA, *awkward)
  assert result.returncode == 0, result.stderr
  train = commands(result.stdout)[-1]
  remote = shlex.split(option(train, "--command"))
  assert remote[remote.index("lm.launch") + 1:remote.index("2>&1")] == ["--distributed=on", *LLAMA, *awkward]


def test_the_remote_run_command_passes_arguments_and_exit_status_through_bash(launch_tpu, tmp_path):
  """Runs the printed remote command in bash, with a fake ~/lm/.venv/bin/python that prints its arguments."""
  awkward = ["a b", "it's \"quoted\"", "$HOME;", "`id`", "", "new\nline", "~/x", "*"]
  result = launch_tpu(*V5P, "--skip-setup", "--dry-run", "--", *LLAMA, *awkward)
  assert result.returncode == 0, result.stderr
  (train,) = commands(result.stdout)[1:]
  home = tmp_path / "home"
  python = home / "lm" / ".venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  python.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\nsys.exit(3)\n")
  python.chmod(0o755)
  env = dict(os.environ, HOME=str(home))
  remote = subprocess.run(["bash", "-c", option(train, "--command")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
  assert remote.returncode == 3, remote.stderr
  assert json.loads(remote.stdout) == ["-m", "lm.launch", "--distributed=on", *LLAMA, *awkward]
  assert (home / "lm" / "train.log").read_text() == remote.stdout


def test_the_remote_install_command_runs_in_bash(launch_tpu, tmp_path):
  """Runs the printed install command in bash against a fake python3.13 and pip: it unpacks and installs."""
  result = launch_tpu(*V5P, "--dry-run", "--", *LLAMA)
  assert result.returncode == 0, result.stderr
  install = commands(result.stdout)[3]
  home, bin_dir, code = tmp_path / "home", tmp_path / "worker_bin", tmp_path / "code"
  for directory in (home / "lm" / ".venv" / "bin", bin_dir, code):
    directory.mkdir(parents=True)
  (code / "requirements.txt").write_text("jax==0.0.1\n")
  subprocess.run(["tar", "-czf", str(home / "lm.tar.gz"), "-C", str(code), "."], check=True, timeout=60)
  pip_log = tmp_path / "pip.log"
  for path, text in ((bin_dir / "python3.13", "#!/bin/sh\nexit 0\n"),  # Has ensurepip: no apt-get.
                     (home / "lm" / ".venv" / "bin" / "python", "#!/bin/sh\nexit 0\n"),
                     (home / "lm" / ".venv" / "bin" / "pip", f'#!/bin/sh\necho "$*" >> {shlex.quote(str(pip_log))}\n')):
    path.write_text(text)
    path.chmod(0o755)
  env = dict(os.environ, HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  remote = subprocess.run(["bash", "-c", option(install, "--command")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
  assert remote.returncode == 0, remote.stderr
  assert (home / "lm" / "requirements.txt").read_text() == "jax==0.0.1\n"
  assert pip_log.read_text().splitlines() == [
      "install -q --upgrade pip", "install -q -r requirements.txt",
      f"install -q jax[tpu]=={jax_pin()} -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"]


@pytest.mark.parametrize("flag", ["--project", "--zone", "--accelerator", "--name"])
def test_a_missing_required_option_is_refused(launch_tpu, flag):
  args = list(V5P)
  del args[args.index(flag):args.index(flag) + 2]
  result = launch_tpu(*args, "--dry-run", "--", *LLAMA)
  assert result.returncode == 2 and result.stdout == ""
  assert re.search(rf"missing required option\(s\): .*{flag}\b", result.stderr), result.stderr


def test_all_missing_options_are_named(launch_tpu):
  result = launch_tpu("--dry-run", "--", *LLAMA)
  assert result.returncode == 2
  assert "missing required option(s): --project --zone --accelerator --name" in result.stderr


def test_an_unknown_option_is_refused(launch_tpu):
  result = launch_tpu(*V5P, "--bogus", "--dry-run", "--", *LLAMA)
  assert result.returncode == 2 and result.stdout == ""
  assert "unknown option: --bogus" in result.stderr


@pytest.mark.parametrize("accelerator", ["a100-8", "v5p", "v5p-64x", "tpu"])
def test_a_bad_accelerator_type_is_refused(launch_tpu, accelerator):
  args = ["--project", "p", "--zone", "z", "--accelerator", accelerator, "--name", "n", "--dry-run", "--", *LLAMA]
  result = launch_tpu(*args)
  assert result.returncode == 2 and result.stdout == ""
  assert "is not a TPU type" in result.stderr


def test_a_run_needs_lm_launch_arguments(launch_tpu):
  result = launch_tpu(*V5P, "--dry-run")
  assert result.returncode == 2 and "nothing to run" in result.stderr


@pytest.mark.parametrize("tail", [["--name"], ["--name", "--dry-run", "--", "--config", "x"]])
def test_a_flag_without_a_value_is_refused(launch_tpu, tail):
  result = launch_tpu("--project", "p", "--zone", "z", "--accelerator", "v4-8", *tail)
  assert result.returncode == 2 and "--name needs a value" in result.stderr


def test_a_flag_that_takes_no_value_refuses_one(launch_tpu):
  result = launch_tpu(*V5P, "--spot=yes", "--dry-run", "--", *LLAMA)
  assert result.returncode == 2 and "--spot takes no value" in result.stderr


def test_delete_prints_the_delete_command(launch_tpu):
  result = launch_tpu("--project", "my-proj", "--zone", "us-east5-a", "--name", "llm-v5p", "--delete", "--dry-run")
  assert result.returncode == 0, result.stderr
  assert result.stdout == "+ gcloud compute tpus queued-resources delete llm-v5p --zone=us-east5-a --project=my-proj " \
                          "--force --quiet\n"
  result = launch_tpu(*V5P, "--no-queue", "--delete", "--dry-run")
  assert result.returncode == 0, result.stderr
  assert result.stdout == "+ gcloud compute tpus tpu-vm delete llm-v5p --zone=us-east5-a --project=my-proj --quiet\n"


def test_delete_does_not_take_a_run(launch_tpu):
  assert launch_tpu(*V5P, "--delete", "--dry-run", "--", *LLAMA).returncode == 2


def test_no_queue_creates_the_tpu_vm_directly_and_delete_after_deletes_it(launch_tpu):
  result = launch_tpu(*V5P, "--no-queue", "--skip-setup", "--delete-after", "--dry-run", "--", *LLAMA)
  assert result.returncode == 0, result.stderr
  create, train, delete = commands(result.stdout)
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "llm-v5p", *LOCATION,
                    "--accelerator-type=v5p-64", "--version=v2-alpha-tpuv5"]
  assert train[3:5] == ["tpu-vm", "ssh"] and "lm.launch --distributed=on" in option(train, "--command")
  assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "llm-v5p", *LOCATION, "--quiet"]
  assert "would wait" not in result.stderr


def test_help(launch_tpu):
  result = launch_tpu("--help")
  assert result.returncode == 0
  assert "Usage:" in result.stdout and "--dry-run" in result.stdout and "v5p-64" in result.stdout
  assert os.access(SCRIPT, os.X_OK)


def test_slurm_gpu_sbatch():
  path = os.path.join(REPO, "experiments", "slurm_gpu.sbatch")
  subprocess.run(["bash", "-n", path], check=True, timeout=60)
  with open(path) as f:
    text = f.read()
  assert re.search(r"^srun .*python -m lm\.launch --distributed=on", text, re.M)
  for line in ("#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8", "#SBATCH --nodes=", "#SBATCH --time="):
    assert re.search(rf"^{re.escape(line)}", text, re.M), line
  assert "jax[cuda12]" in text and '"$@"' in text
