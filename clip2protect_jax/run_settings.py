"""The settings a workdir's finished work was computed with, so that a rerun with other
settings fails instead of mixing old results with new ones.

Each resumable stage keeps `<stage folder>/<name>.json`: the config fields its results
depend on (dotted names -> JSON values). A rerun compares them with its own config while
the stage's results exist; fields that only change how fast or how it is reported (batch
sizes of per-image work, the generator's graph choices, which all compute the same
function, evaluation thresholds, the report) are left out by the callers.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping

from absl import logging
from flax import traverse_util

from clip2protect_jax.image_io import atomic_write_json


# The generator's graph choices: each computes the same function (README, "Fast pivotal
# tuning"), so a resumed run may switch them.
GRAPH_FIELDS = ("generator.upsample_impl", "generator.conv_impl", "generator.modulation")


class SettingsMismatchError(RuntimeError):
  """A workdir's finished results were computed with other settings than this run's."""


def select(config, include: Iterable[str], exclude: Iterable[str] = ()) -> dict[str, Any]:
  """{dotted field: value} of config's leaves under `include` (field or section names), less
  `exclude`."""
  include, exclude = tuple(include), set(exclude)
  flat = traverse_util.flatten_dict(
      config.to_dict() if hasattr(config, "to_dict") else dict(config), sep=".")
  return {k: v for k, v in flat.items() if k not in exclude and under(k, include)}


def has_files(folder: str) -> bool:
  """Whether `folder` exists and holds anything (a stage's finished results)."""
  return os.path.isdir(folder) and bool(os.listdir(folder))


def under(key: str, prefixes: Iterable[str]) -> bool:
  """Whether dotted field `key` is one of `prefixes` or lies in one of those sections."""
  return any(key == p or key.startswith(p + ".") for p in prefixes)


def check(path: str, settings: Mapping[str, Any], has_results: bool, what: str,
          optional: Iterable[str] = ()) -> None:
  """Records `settings` at `path`, or raises SettingsMismatchError if `has_results` and the
  recorded settings differ (every differing field listed). Without results the file is
  rewritten: nothing computed with the old settings is reused. `what` names the results
  ("the protected faces in workdir/protect") in messages. `optional`: fields (or sections)
  compared only where both records have them: those a record leaves out while unused, and
  those older versions did not record (their records stay valid)."""
  settings = json.loads(json.dumps(dict(settings)))   # as JSON stores it: tuples -> lists
  optional = tuple(optional)
  if has_results and os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    show = lambda d, k: repr(d[k]) if k in d else "(not set)"
    diffs = [f"{k}: {show(saved, k)} there, {show(settings, k)} now"
             for k in sorted(set(saved) | set(settings))
             if show(saved, k) != show(settings, k)
             and not (under(k, optional) and (k not in saved or k not in settings))]
    if diffs:
      raise SettingsMismatchError(
          f"{what} were computed with other settings ({path}): " + "; ".join(diffs) +
          ". Reusing them would mix two settings in one result. Use a new --workdir, rerun "
          f"with the settings in {path}, or delete {os.path.dirname(path)} to recompute "
          "this stage.")
    return
  if has_results:
    logging.warning("%s have no settings record (%s; made by an older version): they are "
                    "kept and assumed to match this run's settings, which are recorded now",
                    what, path)
  atomic_write_json(path, settings)


def lacks(path: str, fields: Iterable[str]) -> bool:
  """Whether the record at `path` exists and lacks any of `fields` (an older version's)."""
  if not os.path.exists(path):
    return False
  with open(path) as f:
    saved = json.load(f)
  return any(k not in saved for k in fields)


def add_missing(path: str, settings: Mapping[str, Any]) -> None:
  """Adds to the record at `path` the fields of `settings` it lacks: those an older version
  did not record, which check() let pass as optional, once the caller has checked them
  otherwise (protect/: the inversion's, by invert/'s own records) or takes them as they
  are now (weights fingerprints, as check() takes a missing record). Later runs compare
  them."""
  settings = json.loads(json.dumps(dict(settings)))
  with open(path) as f:
    saved = json.load(f)
  missing = {k: v for k, v in settings.items() if k not in saved}
  if missing:
    logging.info("%s: recording %s (made by an older version without them)", path,
                 sorted(missing))
    atomic_write_json(path, {**saved, **missing})
