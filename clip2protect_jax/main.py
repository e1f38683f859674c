"""Entry point: flags -> config -> job.run(config, workdir).

  python -m clip2protect_jax.main --config=configs/generate.py:demo --workdir=workdir/demo
"""
import importlib

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

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
  app.run(main)
