"""Config builders shared by configs/*.py (the presets users pick on the command line).

configs/protect.py (corrected default) and configs/official.py (every quirk of
REFERENCE.md section 8 on) both call `protect_config`; they differ only in the switches
listed in `OFFICIAL_QUIRKS`.
"""
from __future__ import annotations

import difflib
import os

import ml_collections

STYLEGAN2_FFHQ = "checkpoints/stylegan2-ffhq-config-f"
E4E_FFHQ = "checkpoints/e4e_ffhq_encode"
CLIP_VIT_B32 = "checkpoints/clip-vit-b32"
LPIPS_VGG = "checkpoints/lpips_vgg"
EXAMPLE_PHOTOS = "assets/photos"    # tools/fetch_assets.py puts the example photos here

# The paper's default target (AMT-GAN target choice 2, CelebA-HQ; REFERENCE.md section 4):
# optimise against 085807, evaluate on 047073. Crops are (row0, row1, col0, col1).
PAPER_TARGET = dict(photo="checkpoints/targets/085807.jpg", crop=(187, 891, 244, 764),
                    eval_photo="checkpoints/targets/047073.jpg", eval_crop=(234, 905, 266, 791))

# Field -> value that the official preset sets (REFERENCE.md section 8).
OFFICIAL_QUIRKS = {
    "tune.schedule": "cumulative",           # 1: one generator carried across images
    "protect.official_clip_shift": True,     # 2: CLIP sees (v + 1) / 2 of [0, 1] images
    "protect.official_output_step": True,    # 3: output = forward of step index 49
    "protect.official_dodging": True,        # 4: dodging keeps the target term
}


def unknown_override(config: ml_collections.ConfigDict, args) -> str | None:
  """Why the first `--config.FIELD=VALUE` of `args` naming no field of `config` fails (the
  fields there, the closest first), or None when each names one."""
  for arg in args:
    if not arg.startswith("--config."):
      continue
    path = arg.split("=", 1)[0][len("--config."):].split(".")
    node = config
    for depth, part in enumerate(path):
      if not isinstance(node, ml_collections.ConfigDict):
        return (f"{arg}: config.{'.'.join(path[:depth])} is a value, not a section with "
                "fields")
      if part not in node:
        where = ".".join(["config", *path[:depth]])
        close = difflib.get_close_matches(part, list(node.keys()), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return (f"{arg}: {where} has no field {part!r}.{hint} Its fields: "
                f"{', '.join(sorted(node.keys()))}.")
      node = node[part]
  return None


def check_choice(value, known: tuple, field: str) -> None:
  """ValueError naming config field `field` unless `value` is one of `known`."""
  if value not in known:
    raise ValueError(f"config.{field}={value!r}: use one of {', '.join(map(str, known))}")


def generator_config(size: int = 1024) -> ml_collections.ConfigDict:
  """rosinality Generator(size, 512, 8, channel_multiplier=2, lr_mlp=0.01)."""
  return ml_collections.ConfigDict(dict(
      size=size,
      style_dim=512,
      n_mlp=8,
      channel_multiplier=2,
      channel_max=512,          # < 512 only for small test/demo models
      lr_mlp=0.01,
      blur_kernel=(1, 3, 3, 1),
      dtype="float32",          # float32 | bfloat16 (convs and the maps between layers)
      precision="default",      # lax precision: default | high | highest
      # How the graph is formed; each choice computes the same function (README, "Fast
      # pivotal tuning"). The defaults are the GPU's fastest measured (H200: tuning step
      # 40.4 -> 14.2 ms/image at batch 1, fp32, and batching scales); tiny_generator
      # sets the torch-shaped graph, faster on a CPU.
      upsample_impl="subpixel",  # subpixel (one conv, blur folded in) | phases (fewer
                                 # FLOPs, blur separate) | taps (the transposed conv's
                                 # 9 taps as one matrix product; phases and taps
                                 # untimed) | dilated (as torch)
      conv_impl="grouped",      # grouped | hybrid | im2col | tapwise | xla (how convs with
                                # per-image weights and their gradients are formed under
                                # vmap: layers.conv2d; hybrid untimed)
      modulation="auto",        # auto | weights (the official fused form) | activations
      # Converted checkpoint folder, or "random" for the constructor's init (seeded).
      weights=STYLEGAN2_FFHQ,
  ))


def tiny_generator(config: ml_collections.ConfigDict, size: int = 32, style_dim: int = 32,
                   channel_max: int = 16) -> None:
  config.generator.update(size=size, style_dim=style_dim, n_mlp=2, channel_max=channel_max,
                          weights="random", upsample_impl="dilated", conv_impl="xla",
                          modulation="activations")


def protect_config(arg: str = "", official: bool = False) -> ml_collections.ConfigDict:
  """The `protect` job's config. arg: "" (paper settings) | "demo" | "tiny"."""
  c = ml_collections.ConfigDict()
  c.job = "protect"
  c.seed = 0
  c.photos = "photos"                 # a folder (searched recursively) or one photo
  c.batch_size = 4                    # faces per compiled step (tuning and search)
  c.devices = 0                       # local devices a batch is split over; 0: each stage
                                      # as many as divide its batch size (parallel.py)
  c.num_shards = 1                    # processes sharing the photos (one --workdir); 0:
                                      # from the launcher, SLURM/MPI/TPU pod (shards.py)
  c.shard_index = 0                   # this process's shard, when num_shards > 1

  # -- align + invert (the `invert` job's fields, see configs/invert.py)
  c.method = "e4e"                    # e4e | projection | latents
  c.generator = generator_config(1024)
  c.align = ml_collections.ConfigDict(dict(
      enabled=True, face_policy="largest", output_size=1024, upsample=1, on_error="skip"))
  c.e4e = ml_collections.ConfigDict(dict(weights=E4E_FFHQ, batch_size=4,
                                         matmul_precision="highest"))
  c.projection = ml_collections.ConfigDict(dict(
      steps=1000, lr=0.1, lr_rampup=0.05, lr_rampdown=0.25, noise=0.05, noise_ramp=0.75,
      noise_regularize=1e5, mse=0.0, lpips=1.0, lpips_weights=LPIPS_VGG, w_plus=True,
      n_mean_latent=10000, batch_size=4))
  c.latents_file = ""

  # -- stage 1: pivotal tuning (REFERENCE.md section 3)
  c.tune = ml_collections.ConfigDict(dict(
      steps=150, learning_rate=5e-4, loss_resolution=256, mse_weight=0.1, lpips_weight=1.0,
      schedule="per_image",  # per_image | cumulative (official quirk 1) | joint (fast mode)
      max_resolution=0,      # 0: tune every layer; R: only synthesis layers <= R px (fast)
      lpips_weights=LPIPS_VGG, lpips_dtype="float32"))  # bfloat16: the VGG trunk in bf16

  # -- stage 2: adversarial latent search (REFERENCE.md sections 4-5)
  c.prompt = "red lipstick"
  c.source_text = "face"
  c.clip = ml_collections.ConfigDict(dict(preset="ViT-B/32", weights=CLIP_VIT_B32,
                                          dtype="float32"))  # | bfloat16 | float16 (official)
  c.target = ml_collections.ConfigDict(dict(PAPER_TARGET))  # crop () = dlib face box
  c.fr = ml_collections.ConfigDict(dict(
      surrogates=("ir152", "irse50", "mobile_face"),  # attacked with gradients
      victims=("facenet",),                          # evaluated only (black box)
      weights_dir="checkpoints",                     # FOLDER/<name>, or "random"
  ))
  c.protect = ml_collections.ConfigDict(dict(
      steps=50, learning_rate=0.01, latent_weight=0.01, adversarial_weight=0.7,
      clip_weight=0.3, trainable_rows=tuple(range(8, 18)), noise_max_resolution=256,
      mode="impersonation", distortion_scale=0.5, num_aug=1, official_dodging=False,
      official_clip_shift=False, official_output_step=False))
  c.evaluate = ml_collections.ConfigDict(dict(
      fars=(0.1, 0.01, 0.001),
      dlib_victim=True,    # dlib's C++ ResNet descriptor as a real black-box victim
      # Dodging reference: a folder holding another photo of each source's person at the
      # photo's path relative to `photos` (any extension), as the paper measures dodging;
      # '' = the original photo itself.
      source_references="",
  ))
  c.report = ml_collections.ConfigDict(dict(enabled=True, max_faces=100, thumb_size=192))

  if arg == "demo":
    _demo(c)
  elif arg == "tiny":
    _tiny(c)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use '', 'demo' or 'tiny'")
  if official:
    for field, value in OFFICIAL_QUIRKS.items():
      section, name = field.split(".")
      c[section][name] = value
  return c


def _example_target(c: ml_collections.ConfigDict) -> None:
  """Target identity from the example photos: optimise on obama.jpg, evaluate on obama2.jpg."""
  c.photos = os.path.join(EXAMPLE_PHOTOS, "sources")
  c.target.update(photo=os.path.join(EXAMPLE_PHOTOS, "targets", "obama.jpg"), crop=(),
                  eval_photo=os.path.join(EXAMPLE_PHOTOS, "targets", "obama2.jpg"),
                  eval_crop=())


def _demo(c: ml_collections.ConfigDict) -> None:
  """The embedded default: real photos, real FR models from npm, every converted checkpoint
  that exists, else a small RANDOM generator fitted by pivotal tuning (and random
  CLIP/LPIPS), sized for 2 CPUs."""
  _example_target(c)
  c.batch_size = 2
  if not os.path.isdir(STYLEGAN2_FFHQ):
    tiny_generator(c, size=64, style_dim=64, channel_max=64)
    c.align.output_size = 64
    c.method = "projection"     # no e4e for a random generator: a short MSE projection
    c.projection.update(steps=50, mse=1.0, lpips=0.0, noise_regularize=1e3,
                        n_mean_latent=512, batch_size=2)
    # A random generator has to learn the whole face: MSE only, larger steps.
    c.tune.update(steps=150, learning_rate=1e-2, loss_resolution=64, mse_weight=1.0,
                  lpips_weight=0.0)
    c.protect.update(trainable_rows=tuple(range(4, 10)), noise_max_resolution=32)
  elif not os.path.isdir(E4E_FFHQ):
    c.method = "projection"
  for name, path in (("clip", CLIP_VIT_B32),):
    if not os.path.isdir(path):
      c[name].weights = "random"
  if not os.path.isdir(LPIPS_VGG):   # a random VGG's distance would steer the fit: MSE
    c.tune.update(lpips_weight=0.0, mse_weight=1.0, lpips_weights="random")
    c.projection.update(lpips=0.0, mse=1.0, lpips_weights="random")
  # Real FR models from npm (tools/fetch_assets.py): attack two, hold out dlib's ResNet (in
  # Flax here, and as dlib's C++ descriptor on the pasted-back photos).
  c.fr.update(surrogates=("faceres", "mobileface"), victims=("dlib_resnet",),
              weights_dir="checkpoints")


def _tiny(c: ml_collections.ConfigDict) -> None:
  """CPU smoke run in about a minute: tiny random networks on the example photos."""
  _example_target(c)
  tiny_generator(c)
  c.batch_size = 2
  c.align.output_size = 32
  c.method = "projection"
  c.projection.update(steps=5, mse=1.0, lpips=0.0, noise_regularize=1e3, n_mean_latent=64,
                      batch_size=2)
  c.tune.update(steps=3, learning_rate=1e-2, loss_resolution=32, mse_weight=1.0,
                lpips_weight=0.0, lpips_weights="random")
  c.clip.update(preset="tiny", weights="random")
  c.fr.update(surrogates=("mobile_face",), victims=("irse50",), weights_dir="random")
  c.protect.update(steps=3, trainable_rows=tuple(range(4, 8)), noise_max_resolution=16)
  c.report.thumb_size = 64
