"""The host allocator: which glibc tunables a run restarts under, the restart itself, and unchanged numerics."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lm import process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_reuse_allocator_restarts_once_and_keeps_other_tunables():
  wanted = process.needs_restart("reuse", environ={"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, libc="glibc")
  entries = dict(item.split("=") for item in wanted.split(":"))
  assert entries == {"glibc.pthread.rseq": "0", **process.REUSE_TUNABLES}
  assert process.needs_restart("reuse", environ={"GLIBC_TUNABLES": wanted}, libc="glibc") is None
  assert process.needs_restart("system", environ={}, libc="glibc") is None
  assert process.needs_restart("reuse", environ={}, libc="") is None  # not glibc: nothing to set
  with pytest.raises(ValueError, match="train.host_allocator must be one of reuse, system; got 'jemalloc'"):
    process.needs_restart("jemalloc", environ={}, libc="glibc")


SCRIPT = textwrap.dedent("""
    import os, sys
    from lm import process
    print("start", os.environ.get("GLIBC_TUNABLES", "-"), flush=True)
    process.apply_host_allocator(sys.argv[1])
    print("running", os.environ.get("GLIBC_TUNABLES", "-"), sys.argv[1:], flush=True)
""")


@pytest.mark.skipif(process.needs_restart("reuse", environ={}) is None, reason="not a glibc system")
def test_the_command_is_restarted_with_its_arguments_under_the_tunables(tmp_path):
  script = tmp_path / "show.py"
  script.write_text(SCRIPT)
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  env["PYTHONPATH"] = ROOT
  out = subprocess.run([sys.executable, str(script), "reuse", "--x=1"], env=env, capture_output=True, text=True,
                       check=True, timeout=60).stdout.splitlines()
  wanted = process.needs_restart("reuse", environ={})
  assert out == ["start -", f"start {wanted}", f"running {wanted} ['reuse', '--x=1']"]
  out = subprocess.run([sys.executable, str(script), "system"], env=env, capture_output=True, text=True, check=True,
                       timeout=60).stdout.splitlines()
  assert out == ["start -", "running - ['system']"]


LOSS = textwrap.dedent("""
    import sys
    from lm import process
    process.apply_host_allocator(sys.argv[1])
    from configs import tiny
    from experiments import bench_train
    config = tiny.get_config()
    config.train.global_batch_size = 2
    step = bench_train.OurStep(config)
    step()
    print(repr(step()))
""")


def test_the_allocator_leaves_the_loss_of_a_fixed_batch_unchanged(tmp_path):
  script = tmp_path / "loss.py"
  script.write_text(LOSS)
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XLA_FLAGS")}
  env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  losses = [subprocess.run([sys.executable, str(script), allocator], env=env, capture_output=True, text=True,
                           check=True, timeout=300).stdout.split()[-1] for allocator in ("reuse", "system")]
  assert losses[0] == losses[1]


def test_launch_names_an_unknown_allocator_before_starting_anything():
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  result = subprocess.run([sys.executable, "-m", "lm.launch", "--config", "configs/tiny.py",
                           "--config.train.host_allocator=jemalloc"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 2
  assert "config error: train.host_allocator must be one of reuse, system; got 'jemalloc'" in result.stderr


def test_the_cpu_dot_library_option_is_given_to_cpu_compilations_only():
  assert process.compiler_options("onednn", "cpu") == {
      "xla_cpu_use_onednn": True, "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
  assert process.compiler_options("ynnpack", "cpu") is None
  assert process.compiler_options("onednn", "gpu") is None
  with pytest.raises(ValueError, match="train.cpu_dot_library must be one of onednn, ynnpack; got 'mkl'"):
    process.compiler_options("mkl", "cpu")


def test_the_cpu_dot_library_reaches_the_step_and_leaves_the_loss_of_a_fixed_batch_unchanged():
  from configs import tiny
  from experiments import bench_train

  losses, texts = {}, {}
  for library in process.CPU_DOT_LIBRARIES:
    config = tiny.get_config()
    config.train.cpu_dot_library = library
    step = bench_train.OurStep(config)  # on the 8 host devices of the test session: a sharded step
    texts[library] = step.compiled_text()
    losses[library] = [step() for _ in range(3)]
  assert "onednn_fusion" in texts["onednn"] and "onednn_fusion" not in texts["ynnpack"]
  np.testing.assert_allclose(losses["onednn"], losses["ynnpack"], rtol=2e-6)


def test_a_dropped_onednn_trainer_outlives_its_last_run_until_later_trainers_are_built():
  # XLA:CPU aborts when a oneDNN executable is destroyed just after a run (see lm/train.py); the last trainers
  # built stay referenced, so a dropped trainer's executables go while later ones are built.
  import gc
  import weakref

  import jax

  from configs import tiny
  from lm import sharding
  from lm import train

  config = tiny.get_config()
  mesh = sharding.make_mesh(config.mesh)
  trainer = train.build(config, mesh)
  jax.block_until_ready(trainer.init_state(jax.random.PRNGKey(0)))
  alive = weakref.ref(trainer.init_state)
  del trainer
  gc.collect()
  assert alive() is not None
  for _ in range(train._RECENT_ONEDNN_TRAINERS.maxlen):  # pylint: disable=protected-access
    train.build(config, mesh)
  gc.collect()
  assert alive() is None
  config.train.cpu_dot_library = "ynnpack"  # nothing to outlive: XLA's default library
  default = weakref.ref(train.build(config, mesh).init_state)
  gc.collect()
  assert default() is None
