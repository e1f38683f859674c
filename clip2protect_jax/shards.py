"""One job's photos split over several processes: the hosts of a TPU pod slice, the tasks
of a SLURM or MPI launch, or jobs started by hand.

Every process runs the same command with the same --workdir (a shared folder) and takes
every num_shards-th photo of the sorted list, starting at its shard_index. The per-photo and
per-face files (aligned faces, W+ codes, protected faces, records) of different shards never
overlap, so the processes never wait for or talk to each other (no jax.distributed: its
coordination service ties the processes together, e.g. at exit and in orbax's restores).
The files that cover a whole run (invert.npz, invert/summary.json, protect/metrics.json,
protect/report.html) cover the shard's own faces and carry its name
(`metrics.shard-1-of-4.json`). Once every shard has finished, the same command with
num_shards=1, run once, finds each face done and writes those files over all of them.

Config fields (jobs `protect` and `invert`):
  num_shards  1 (default): this process does every photo. N > 1: one of N shards, the
              shard_index-th. 0: the shard from the launcher: SLURM's srun
              (SLURM_PROCID of SLURM_STEP_NUM_TASKS), Open MPI (OMPI_COMM_WORLD_RANK of
              OMPI_COMM_WORLD_SIZE), MPICH / Intel MPI (PMI_RANK of PMI_SIZE), else JAX's
              processes (jax.process_index() of jax.process_count(): a TPU pod slice).
  shard_index read when num_shards > 1.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import TypeVar

import jax

T = TypeVar("T")

# (rank, size) environment variables of the launchers num_shards=0 reads, in this order.
LAUNCHERS = (("SLURM_PROCID", "SLURM_STEP_NUM_TASKS"),
             ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
             ("PMI_RANK", "PMI_SIZE"))


@dataclasses.dataclass(frozen=True)
class Shard:
  """This process's part of the photos: `index` of `count` (0 <= index < count)."""
  index: int = 0
  count: int = 1


def from_launcher(environ: Mapping[str, str] = os.environ) -> Shard | None:
  """This process's shard from the first launcher in LAUNCHERS whose variables are set,
  else from JAX's processes when there are several; None if neither."""
  for rank, size in LAUNCHERS:
    if rank in environ and size in environ:
      r, s = environ[rank], environ[size]
      if not (r.isdigit() and s.isdigit() and int(r) < int(s)):
        raise ValueError(f"{rank}={r!r} and {size}={s!r} (config.num_shards=0 reads them): "
                         "not a rank of that many tasks")
      return Shard(int(r), int(s))
  if jax.process_count() > 1:
    return Shard(jax.process_index(), jax.process_count())
  return None


def resolve(config, environ: Mapping[str, str] = os.environ) -> Shard:
  """This process's shard from config.num_shards and config.shard_index. Raises ValueError
  naming the field on values that cannot be a shard, and when JAX itself runs several
  processes (a TPU pod slice) that would do the same photos."""
  count, index = config.num_shards, config.shard_index
  if count == 0:
    shard = from_launcher(environ)
    if shard is None:
      raise ValueError(
          "config.num_shards=0 takes the shard from a launcher, but this process has none "
          f"({', '.join(f'{r}/{s}' for r, s in LAUNCHERS)} unset, one JAX process): give "
          "each process --config.num_shards=N --config.shard_index=I, or use num_shards=1.")
    return shard
  if count < 0:
    raise ValueError(f"config.num_shards={count}: use 1 (every photo), N > 1 (shard "
                     "shard_index of N) or 0 (the shard from the launcher)")
  if count > 1 and not 0 <= index < count:
    raise ValueError(f"config.shard_index={index} with config.num_shards={count}: use 0 to "
                     f"{count - 1}, a different one in each process")
  shard = Shard(index, count) if count > 1 else Shard()
  if jax.process_count() > 1 and shard != Shard(jax.process_index(), jax.process_count()):
    raise ValueError(
        f"JAX runs {jax.process_count()} processes (this one is {jax.process_index()}), but "
        f"config.num_shards={count} and config.shard_index={index} do not give each its "
        "own shard: use --config.num_shards=0.")
  return shard


def select(items: Sequence[T], shard: Shard) -> list[T]:
  """The shard's items: every shard.count-th, from shard.index (all for one shard)."""
  return list(items[shard.index::shard.count])


def output_name(filename: str, shard: Shard) -> str:
  """The file name of a whole-run output for this shard: 'metrics.json' unchanged for one
  shard, 'metrics.shard-1-of-4.json' for shard_index 1 of 4."""
  if shard.count == 1:
    return filename
  stem, ext = os.path.splitext(filename)
  return f"{stem}.shard-{shard.index}-of-{shard.count}{ext}"


def describe(shard: Shard) -> str:
  """' (shard_index 1 of 4 shards)' for messages; '' for one shard."""
  return "" if shard.count == 1 else f" (shard_index {shard.index} of {shard.count} shards)"
