"""Entry point: flags -> config -> job.run(config, workdir).

  python -m clip2protect_jax.main --config=configs/generate.py:demo --workdir=workdir/demo
"""
import importlib
import importlib.util
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from clip2protect_jax import presets

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, configs/NAME.py[:ARG]; override fields with "
    "--config.FIELD=VALUE.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for outputs (resumable).")
flags.mark_flags_as_required(["config", "workdir"])

# config.job -> module with `run(config, workdir)`.
JOBS = {"generate": "clip2protect_jax.generate", "invert": "clip2protect_jax.inversion",
        "protect": "clip2protect_jax.pipeline"}


def split_comma_lists(config: ml_collections.ConfigDict) -> None:
  """In place: string tuples whose items hold commas are split at them.
  `--config.fr.surrogates=irse50,facenet` reaches the config as ('irse50,facenet',):
  ml_collections keeps a string tuple override it cannot parse as a literal as ONE item."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      split_comma_lists(value)
    elif (isinstance(value, tuple) and value and all(isinstance(v, str) for v in value)
          and any("," in v for v in value)):
      config[key] = tuple(p.strip() for v in value for p in v.split(",") if p.strip())


def parse_flags(argv):
  """absl's flag parsing, where a config override naming no field fails naming the flag and
  the fields there (ml_collections raises a chain of bare KeyErrors)."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError, TypeError):
    specs = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    specs += [v for a, v in zip(argv, argv[1:]) if a == "--config"]   # "--config FILE"
    if len(specs) != 1:
      raise
    path, _, arg = specs[0].partition(":")   # as config_flags loads it
    spec = importlib.util.spec_from_file_location("config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    why = presets.unknown_override(config, argv[1:])
    if why is None:
      raise
    sys.stderr.write(f"FATAL Flags parsing error: {why}\n")
    sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  split_comma_lists(config)
  if config.job not in JOBS:
    raise app.UsageError(f"config.job={config.job!r} is not one of {sorted(JOBS)}")
  logging.info("config:\n%s", config)
  importlib.import_module(JOBS[config.job]).run(config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
