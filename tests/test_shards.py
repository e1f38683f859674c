"""Splitting a job's photos over processes (shards.py): the rules, the launchers, and
processes sharing one workdir."""
import os
import socket
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from clip2protect_jax import checkpoints, inversion, presets, shards
from tests.test_inversion import _config as invert_config

pytestmark = pytest.mark.usefixtures("fast_compiles")   # as the processes' (slurm_env)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_ENV = "CLIP2PROTECT_TEST_XLA_CACHE"   # conftest.py's compilation cache folder


def shard_config(num_shards=1, shard_index=0):
  return ml_collections.ConfigDict(dict(num_shards=num_shards, shard_index=shard_index))


def test_shards_partition_the_photos():
  photos = [f"p{i}.jpg" for i in range(7)]
  parts = [shards.select(photos, shards.resolve(shard_config(3, i))) for i in range(3)]
  assert parts == [["p0.jpg", "p3.jpg", "p6.jpg"], ["p1.jpg", "p4.jpg"], ["p2.jpg", "p5.jpg"]]
  assert shards.select(photos, shards.resolve(shard_config(1, 3))) == photos   # whole run
  assert shards.select(photos[:1], shards.resolve(shard_config(2, 1))) == []


def test_shard_from_the_launcher():
  config = shard_config(0)
  for env in ({"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "4", "PMI_RANK": "0"},
              {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4"},
              {"PMI_RANK": "2", "PMI_SIZE": "4"}):
    assert shards.resolve(config, env) == shards.Shard(2, 4), env
  # sbatch's own script (no srun step) has SLURM_PROCID but is one process: not a shard.
  with pytest.raises(ValueError, match="num_shards=0 takes the shard from a launcher"):
    shards.resolve(config, {"SLURM_PROCID": "0", "SLURM_NTASKS": "4"})
  with pytest.raises(ValueError, match="PMI_RANK='4' and PMI_SIZE='4'"):
    shards.resolve(config, {"PMI_RANK": "4", "PMI_SIZE": "4"})


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


def srun_env(task: int, tasks: int, port: int) -> dict[str, str]:
  """The environment of task `task` of `tasks` of a SLURM step on this machine (what srun
  sets; jax.distributed's cluster detection reads it too), a JAX coordinator on a free
  local port; most XLA optimisations off, as conftest.fast_compiles does in process, and
  the test run's compilation cache (conftest.py) read and written."""
  cache = {"JAX_COMPILATION_CACHE_DIR": os.environ[CACHE_ENV],
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"} if CACHE_ENV in os.environ else {}
  return {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1", **cache, **os.environ, "PYTHONPATH": ROOT,
          "JAX_PLATFORMS": "cpu", "SLURM_JOB_ID": "7", "SLURM_NTASKS": str(tasks),
          "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_PROCID": str(task),
          "SLURM_LOCALID": str(task), "SLURM_STEP_NODELIST": "localhost",
          "SLURM_NODELIST": "localhost", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}"}


def run_tasks(argv: list[str], tasks: int, timeout: float) -> list[subprocess.CompletedProcess]:
  """Runs `python argv...` as the `tasks` tasks of a SLURM step at once; their results."""
  port = free_port()
  procs = [subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=srun_env(i, tasks, port),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(tasks)]
  out = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=timeout)
    out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
  return out


def test_jax_processes_each_take_their_own_shard(tmp_path):
  """Two JAX processes (jax.distributed on CPU, as on a TPU pod slice; resolve is given no
  launcher variables to read): num_shards=0 gives each its own shard; num_shards=1, which
  would have both do every photo, is refused; one restores a checkpoint while the other
  does not (shards load models when they have work: orbax's default would wait for all)."""
  path = str(tmp_path / "ckpt")
  checkpoints.save(path, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, {"kind": "t"})
  code = ("import sys, jax, ml_collections, numpy as np\n"
          "from clip2protect_jax import checkpoints, shards\n"
          "jax.distributed.initialize()\n"
          "c = ml_collections.ConfigDict(dict(num_shards=0, shard_index=0))\n"
          "shard = shards.resolve(c, {})\nprint('RESOLVED', shard)\nc.num_shards = 1\n"
          "try:\n  shards.resolve(c, {})\nexcept ValueError as e:\n  print('REFUSED', e)\n"
          "if shard.index == 0:\n"
          "  w = checkpoints.restore(sys.argv[1], {'w': np.zeros((2, 3), np.float32)})['w']\n"
          "  print('RESTORED', w.sum())\n")
  for i, r in enumerate(run_tasks(["-c", code, path], 2, timeout=120)):
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"RESOLVED Shard(index={i}, count=2)" in r.stdout
    assert f"REFUSED JAX runs 2 processes (this one is {i})" in r.stdout
    assert ("RESTORED 15.0" in r.stdout) == (i == 0)


def test_invert_job_as_two_srun_tasks_on_one_workdir(tmp_path):
  """configs/invert.py:tiny on the two example photos as the two tasks of a SLURM step at
  once (--config.num_shards=0: the shard from SLURM_PROCID), then the whole run, which only
  gathers their faces: each face's W+ code as a one-process run's."""
  photos = os.path.join(ROOT, presets.EXAMPLE_PHOTOS, "sources")
  if not os.path.isdir(photos):
    pytest.skip(f"example photos missing: run python tools/fetch_assets.py ({photos})")
  work, ids = str(tmp_path / "shared"), ["astronaut.png_f0", "biden.jpg_f0"]
  results = run_tasks(["-m", "clip2protect_jax.main", "--config=configs/invert.py:tiny",
                       f"--workdir={work}", f"--config.photos={photos}",
                       "--config.num_shards=0"], 2, timeout=600)
  for i, r in enumerate(results):
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert f"invert (shard_index {i} of 2 shards): 1 faces (1 new" in r.stdout
    with np.load(os.path.join(work, "invert", f"invert.shard-{i}-of-2.npz")) as d:
      assert list(d["ids"]) == [ids[i]]
  config = invert_config("tiny")
  config.photos = photos
  whole = inversion.run(config, work)
  assert whole["encoded_now"] == 0 and whole["n_faces"] == 2
  reference = inversion.run(config, str(tmp_path / "one"))
  np.testing.assert_allclose(whole["arrays"]["wplus"], reference["arrays"]["wplus"],
                             atol=1e-4)
