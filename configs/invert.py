"""Invert photos: FFHQ alignment + W+ codes for the protection stages (job `invert`).

Paper setting (e4e; needs checkpoints/e4e_ffhq_encode, converted from e4e_ffhq_encode.pt
with `python tools/convert_checkpoint.py --kind=e4e`):
  python -m clip2protect_jax.main --config=configs/invert.py --workdir=workdir/run \
      --config.photos=PATH/TO/PHOTOS
Without an e4e checkpoint (optimisation-based projection against the generator):
  python -m clip2protect_jax.main --config=configs/invert.py:projection ...
With codes made elsewhere (e.g. the official e4e scripts/inference.py `latents.pt`):
  python -m clip2protect_jax.main --config=configs/invert.py:latents \
      --config.latents_file=latents.pt ...
CPU smoke run (dlib alignment of an example photo from tools/fetch_assets.py + 20
projection steps on a tiny random generator, MSE only; about a minute):
  python -m clip2protect_jax.main --config=configs/invert.py:tiny --workdir=/tmp/invert

Expected result: workdir/invert/invert.npz (ids, boxes, corners, valid, wplus [N, 18, 512]),
workdir/invert/aligned/*.png and workdir/invert/summary.json (with per-photo errors, e.g.
"no face found"). Reruns skip photos and faces already done.
"""
import os

import ml_collections

from clip2protect_jax.presets import EXAMPLE_PHOTOS, generator_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """arg: "" (e4e) | "projection" | "latents" | "tiny" (CPU smoke)."""
  config = ml_collections.ConfigDict()
  config.job = "invert"
  config.seed = 0
  config.photos = "photos"            # a folder (searched recursively) or one image file
  config.devices = 0                  # local devices a batch is split over (parallel.py)
  config.num_shards = 1               # processes sharing the photos (one --workdir); 0:
                                      # from the launcher, SLURM/MPI/TPU pod (shards.py)
  config.shard_index = 0              # this process's shard, when num_shards > 1
  config.method = "e4e"               # e4e | projection | latents
  config.generator = generator_config(1024)   # W+ rows; the projection's generator
  config.align = ml_collections.ConfigDict(dict(
      enabled=True,            # False: photos are already FFHQ-aligned (e.g. CelebA-HQ)
      face_policy="largest",   # largest | last (official e4e) | all | a face index "0", "1"
      output_size=256,         # aligned PNG size; the official recipe hard-codes 256
      upsample=1,              # dlib detector upsampling (official: 1)
      on_error="skip",         # skip (record in summary.json) | raise
  ))
  config.e4e = ml_collections.ConfigDict(dict(
      weights="checkpoints/e4e_ffhq_encode", batch_size=4,
      matmul_precision="highest"))   # GPU: TF32 ('default') moves codes by ~1e-3
  config.projection = ml_collections.ConfigDict(dict(
      steps=1000, lr=0.1, lr_rampup=0.05, lr_rampdown=0.25,   # rosinality projector.py
      noise=0.05, noise_ramp=0.75, noise_regularize=1e5,
      mse=0.0, lpips=1.0,      # loss weights; lpips=0 gives MSE-only projection
      lpips_weights="checkpoints/lpips_vgg",   # orbax {'params'} of models/lpips | random
      w_plus=True,             # False: one W code broadcast to every row
      n_mean_latent=10000, batch_size=4))
  config.latents_file = ""            # method=latents: .npy / .npz / .pt of [N, 18, 512]

  if arg == "projection":
    config.method = "projection"
  elif arg == "latents":
    config.method = "latents"
    config.latents_file = "latents.pt"
  elif arg == "tiny":
    config.method = "projection"
    config.photos = os.path.join(EXAMPLE_PHOTOS, "sources", "astronaut.png")
    config.generator.update(size=32, style_dim=32, n_mlp=2, channel_max=16, weights="random")
    config.projection.update(steps=20, mse=1.0, lpips=0.0, noise_regularize=1e3,
                             n_mean_latent=256, batch_size=2)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use '', 'projection', 'latents' "
                     "or 'tiny'")
  return config
