"""Generate faces with the StyleGAN2 generator (the foundation's main job).

Paper generator (needs the converted official checkpoint, see checkpoints/README.md):
  python -m clip2protect_jax.main --config=configs/generate.py --workdir=workdir/generate
Embedded default (no download; RANDOM weights, so the images are not faces):
  python -m clip2protect_jax.main --config=configs/generate.py:demo --workdir=workdir/demo
CPU smoke run in seconds:
  python -m clip2protect_jax.main --config=configs/generate.py:tiny --workdir=/tmp/tiny
Override any field, e.g. --config.num_images=32 --config.generator.dtype=bfloat16.

Expected result: `workdir/images/000000.png ...` and `workdir/summary.json`, which names
the weights used (a converted checkpoint with its source sha256, or "random").
"""
import ml_collections

from clip2protect_jax.presets import generator_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """arg: "" (paper, 1024, converted weights) | "demo" (256, random) | "tiny" (CPU smoke)."""
  config = ml_collections.ConfigDict()
  config.job = "generate"
  config.seed = 0
  config.generator = generator_config(1024)
  config.num_images = 8
  config.batch_size = 4
  config.devices = 0                  # local devices a batch is split over (parallel.py)
  config.truncation = 0.7             # psi; 1.0 disables truncation
  config.mean_latent_samples = 4096   # used when the checkpoint has no latent_avg

  if arg == "demo":
    config.generator.size = 256
    config.generator.weights = "random"
  elif arg == "tiny":
    config.generator.update(size=32, style_dim=32, n_mlp=2, channel_max=16,
                            weights="random")
    config.num_images = 4
    config.batch_size = 2
    config.mean_latent_samples = 64
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use '', 'demo' or 'tiny'")
  return config
