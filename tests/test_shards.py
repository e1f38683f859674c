"""Splitting a job's photos over processes (shards.py): the rules, and jax.distributed
processes sharing one workdir."""
import os
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from clip2protect_jax import inversion, presets, shards
from tests.test_inversion import _config as invert_config

pytestmark = pytest.mark.usefixtures("fast_compiles")   # as the processes' (slurm_env)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_ENV = "CLIP2PROTECT_TEST_XLA_CACHE"   # conftest.py's compilation cache folder


def shard_config(num_shards=0, shard_index=0, distributed=False):
  return ml_collections.ConfigDict(dict(num_shards=num_shards, shard_index=shard_index,
                                        distributed=distributed))


def test_shards_partition_the_photos():
  photos = [f"p{i}.jpg" for i in range(7)]
  parts = [shards.select(photos, shards.resolve(shard_config(3, i))) for i in range(3)]
  assert parts == [["p0.jpg", "p3.jpg", "p6.jpg"], ["p1.jpg", "p4.jpg"], ["p2.jpg", "p5.jpg"]]
  assert shards.select(photos, shards.resolve(shard_config(1, 3))) == photos   # whole run
  assert shards.select(photos[:1], shards.resolve(shard_config(2, 1))) == []
  assert shards.resolve(shard_config(0)) == shards.Shard(0, 1)   # one process: one shard


def test_output_names_and_bad_fields():
  assert shards.output_name("metrics.json", shards.Shard()) == "metrics.json"
  assert shards.output_name("invert.npz", shards.Shard(1, 4)) == "invert.shard-1-of-4.npz"
  assert shards.describe(shards.Shard()) == ""
  with pytest.raises(ValueError, match="config.shard_index=2 with config.num_shards=2"):
    shards.resolve(shard_config(2, 2))
  with pytest.raises(ValueError, match="config.shard_index=-1"):
    shards.resolve(shard_config(2, -1))
  with pytest.raises(ValueError, match="config.num_shards=-1"):
    shards.resolve(shard_config(-1))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def slurm_env(task: int, tasks: int, port: int) -> dict[str, str]:
  """The environment of SLURM task `task` of `tasks` on this machine (what srun sets and
  jax.distributed's cluster detection reads), the coordinator on a free local port; most
  XLA optimisations off, as conftest.fast_compiles does in process, and the test run's
  compilation cache (conftest.py) read and written."""
  cache = {"JAX_COMPILATION_CACHE_DIR": os.environ[CACHE_ENV],
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"} if CACHE_ENV in os.environ else {}
  return {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1", **cache, **os.environ, "PYTHONPATH": ROOT,
          "JAX_PLATFORMS": "cpu",
          "SLURM_JOB_ID": "7", "SLURM_NTASKS": str(tasks), "SLURM_PROCID": str(task),
          "SLURM_LOCALID": str(task), "SLURM_STEP_NODELIST": "localhost",
          "SLURM_NODELIST": "localhost", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}"}


def run_tasks(argv: list[str], tasks: int, timeout: float) -> list[subprocess.CompletedProcess]:
  """Runs `python argv...` as `tasks` SLURM-like tasks at once; their results."""
  port = free_port()
  procs = [subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=slurm_env(i, tasks, port),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(tasks)]
  out = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=timeout)
    out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
  return out


def test_distributed_processes_get_one_shard_each():
  """jax.distributed.initialize() in two processes (a SLURM-like environment on CPU): each
  resolves num_shards=0 to its own shard of two."""
  code = ("import ml_collections\nfrom clip2protect_jax import shards\n"
          "c = ml_collections.ConfigDict(dict(num_shards=0, shard_index=0, distributed=True))\n"
          "shards.initialize_distributed(c)\nprint('RESOLVED', shards.resolve(c))\n")
  results = run_tasks(["-c", code], 2, timeout=120)
  for i, r in enumerate(results):
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"RESOLVED Shard(index={i}, count=2)" in r.stdout


def test_invert_job_as_two_distributed_processes_on_one_workdir(tmp_path):
  """configs/invert.py:tiny on the two example photos as two SLURM-like processes at once
  (--config.distributed=True: one shard each), then the whole run, which only gathers
  their faces: each face's W+ code as a one-process run's."""
  photos = os.path.join(ROOT, presets.EXAMPLE_PHOTOS, "sources")
  if not os.path.isdir(photos):
    pytest.skip(f"example photos missing: run python tools/fetch_assets.py ({photos})")
  work, ids = str(tmp_path / "shared"), ["astronaut.png_f0", "biden.jpg_f0"]
  results = run_tasks(["-m", "clip2protect_jax.main", "--config=configs/invert.py:tiny",
                       f"--workdir={work}", f"--config.photos={photos}",
                       "--config.distributed=True"], 2, timeout=600)
  for i, r in enumerate(results):
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert f"invert (shard_index {i} of 2 shards): 1 faces (1 new" in r.stdout
    with np.load(os.path.join(work, "invert", f"invert.shard-{i}-of-2.npz")) as d:
      assert list(d["ids"]) == [ids[i]]
  config = invert_config("tiny")
  config.photos = photos
  config.num_shards = 1
  whole = inversion.run(config, work)
  assert whole["encoded_now"] == 0 and whole["n_faces"] == 2
  reference = inversion.run(config, str(tmp_path / "one"))
  np.testing.assert_allclose(whole["arrays"]["wplus"], reference["arrays"]["wplus"],
                             atol=1e-4)


def test_distributed_without_a_cluster_says_what_to_do(monkeypatch):
  def fail(**kwargs):
    raise ValueError("coordinator_address should be defined.")
  monkeypatch.setattr(jax.distributed, "initialize", fail)
  with pytest.raises(RuntimeError, match="--config.num_shards=N --config.shard_index=I"):
    shards.initialize_distributed(shard_config(distributed=True))
  shards.initialize_distributed(shard_config())   # distributed=False: nothing is called
