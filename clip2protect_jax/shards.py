"""One job's photos split over several processes: the hosts of a TPU pod or GPU cluster,
SLURM tasks, or several jobs started by hand.

Every process runs the same command with the same --workdir (a shared folder) and takes
every num_shards-th photo of the sorted list, starting at its shard_index. The per-photo and
per-face files (aligned faces, W+ codes, protected faces, records) of different shards never
overlap, so the processes need no communication. The files that cover a whole run
(invert.npz, invert/summary.json, protect/metrics.json, protect/report.html) cover the
shard's own faces and carry its name (`metrics.shard-1-of-4.json`). Once every shard has
finished, the same command with num_shards=1 finds each face done and writes those files
over all of them.

Config fields (jobs `protect` and `invert`): num_shards (0: one shard per JAX process,
jax.process_index() being this one's; that is 1 shard unless jax.distributed is set up),
shard_index (read when num_shards > 1), distributed (True: jax.distributed.initialize(),
which detects SLURM, Open MPI, Kubernetes and Cloud TPU settings, before anything else).
With jax.distributed the processes are tied together by JAX's coordination service: one
that finishes early waits at exit for the rest (SHUTDOWN_WAIT_SECONDS), and one that dies
can make JAX stop the others. Finished faces stay done: the same command resumes.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import TypeVar

import jax

T = TypeVar("T")
# How long a process that has finished its shard waits at exit for the others. Process 0
# holds JAX's coordination service; JAX's default (300 s) makes every process abort when
# shards finish more than that apart (measured: a 15 s gap with 5 s aborts both).
SHUTDOWN_WAIT_SECONDS = 7 * 24 * 3600


@dataclasses.dataclass(frozen=True)
class Shard:
  """This process's part of the photos: `index` of `count` (0 <= index < count)."""
  index: int = 0
  count: int = 1


def initialize_distributed(config) -> None:
  """jax.distributed.initialize() if config.distributed (a config without the field: no);
  must run before anything touches a JAX device."""
  if not config.get("distributed", False):
    return
  try:
    jax.distributed.initialize(shutdown_timeout_seconds=SHUTDOWN_WAIT_SECONDS)
  except (ValueError, RuntimeError) as e:
    raise RuntimeError(
        f"config.distributed=True, but jax.distributed.initialize() failed: {e}. It detects "
        "SLURM, Open MPI, Kubernetes and Cloud TPU clusters (JAX_COORDINATOR_ADDRESS sets "
        "the coordinator). Elsewhere leave distributed=False and give each process "
        "--config.num_shards=N --config.shard_index=I.") from e


def resolve(config) -> Shard:
  """This process's shard from config.num_shards and config.shard_index (0 shards: one per
  JAX process; 1: all photos, shard_index ignored). Raises ValueError naming the field on
  values that cannot be a shard."""
  count, index = config.num_shards, config.shard_index
  if count == 0:
    return Shard(jax.process_index(), jax.process_count())
  if count == 1:   # the whole run, whatever shard_index the shards' commands gave
    return Shard()
  if count < 0:
    raise ValueError(f"config.num_shards={count}: use 0 (one shard per JAX process) or the "
                     "number of processes the photos are split over")
  if not 0 <= index < count:
    raise ValueError(f"config.shard_index={index} with config.num_shards={count}: use 0 to "
                     f"{count - 1}, a different one in each process")
  return Shard(index, count)


def select(items: Sequence[T], shard: Shard) -> list[T]:
  """The shard's items: every shard.count-th, from shard.index (all for one shard)."""
  return list(items[shard.index::shard.count])


def output_name(filename: str, shard: Shard) -> str:
  """The file name of a whole-run output for this shard: 'metrics.json' unchanged for one
  shard, 'metrics.shard-1-of-4.json' for shard 1 of 4."""
  if shard.count == 1:
    return filename
  stem, ext = os.path.splitext(filename)
  return f"{stem}.shard-{shard.index}-of-{shard.count}{ext}"


def describe(shard: Shard) -> str:
  """' (shard_index 1 of 4 shards)' for messages; '' for one shard."""
  return "" if shard.count == 1 else f" (shard_index {shard.index} of {shard.count} shards)"
