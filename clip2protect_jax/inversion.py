"""Job `invert`: photos -> FFHQ-aligned faces -> W+ codes, written resumably to the workdir.

  python -m clip2protect_jax.main --config=configs/invert.py --workdir=workdir/run \
      --config.photos=my_photos/

Stages (each output is written atomically, and a rerun skips what exists):
1. align: every photo in `config.photos` (a folder or one file) -> dlib detection, face
   choice by `config.align.face_policy`, the e4e FFHQ alignment (align.py). Per photo
   `invert/faces/<photo key>.json` (its faces: box, corners, valid region, or the error)
   and per face `invert/aligned/<face id>.png` (uint8 RGB, output_size^2).
   With `config.align.enabled=False` the photos are taken as already aligned (resized
   with PIL bilinear, as e4e's transform does).
2. encode, by `config.method`:
   - "e4e": a converted e4e checkpoint (convert/e4e.py) on the 256x256 aligned faces;
   - "projection": optimisation (projection.py) against the generator in config.generator;
   - "latents": W+ codes from `config.latents_file` (.npy / .npz / .pt, e.g. the official
     e4e `latents.pt`), in the photos' sorted path order or matched by an `ids` array.
   Per face `invert/latents/<face id>.npz` (`wplus` [n_latent, 512] float32, and the noise
   maps `noise_K` [r, r, 1] for projection).
3. `invert/invert.npz`: ids, sources, face_index, boxes [N, 4] (l, t, r, b photo pixels),
   corners [N, 4, 2] (aligned square in the photo: NW, SW, SE, NE), valid [N, 8]
   (align.photo_valid_region), at_border [N], wplus [N, n_latent, 512]; and
   `invert/summary.json` (counts, per-file errors, method, weights used). A run split into
   shards (shards.py) aligns and encodes its own photos and names these two files after
   its shard (`invert.shard-0-of-2.npz`).
Later stages read invert.npz and the aligned PNGs; align.paste_back(photo, face,
corners, valid) puts a protected face back into its photo.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import re
import time
import zipfile
import zlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from clip2protect_jax import align, image_io, parallel, presets, run_settings, shards
from clip2protect_jax import weights as weights_lib
from clip2protect_jax.convert.common import torch_load_failure
from clip2protect_jax.image_io import atomic_savez, atomic_write_json, file_sha256

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SUBDIR = "invert"


# ------------------------------------------------------------------ small helpers

def list_photos(path: str) -> list[str]:
  """Sorted photo files of a folder (recursively), or [path] for one file."""
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise FileNotFoundError(f"config.photos={path!r}: no such file or folder. Point it at "
                            "a folder of photos (jpg/png) or at one photo.")
  out = []
  for root, _, files in os.walk(path):
    out += [os.path.join(root, f) for f in files if f.lower().endswith(PHOTO_EXTENSIONS)]
  if not out:
    raise FileNotFoundError(f"config.photos={path!r}: no {'/'.join(PHOTO_EXTENSIONS)} "
                            "files found.")
  return sorted(out)


def photo_key(photo: str, root: str) -> str:
  """A file-name-safe key of a photo relative to config.photos: 'sub__name.jpg'."""
  rel = os.path.relpath(photo, root) if os.path.isdir(root) else os.path.basename(photo)
  return re.sub(r"[^A-Za-z0-9._-]", "_", rel.replace(os.sep, "__"))


def face_id(key: str, index: int) -> str:
  return f"{key}_f{index}"


def image_key(base: jax.Array, fid: str) -> jax.Array:
  """A PRNG key per face from its id: stable across batches, reruns and photo sets."""
  return jax.random.fold_in(base, zlib.crc32(fid.encode()) & 0x7FFFFFFF)


# ------------------------------------------------------------------ stage 1: align

def _pre_aligned(photo: np.ndarray, size: int) -> tuple[np.ndarray, dict[str, Any]]:
  h, w = photo.shape[:2]
  image = photo if (h, w) == (size, size) else np.asarray(
      Image.fromarray(photo).resize((size, size), Image.Resampling.BILINEAR))
  record = {"face_index": 0, "box": [0, 0, w, h],
            "corners": [[0, 0], [0, h], [w, h], [w, 0]],
            "valid": [0, 0, w, h, 0, 0, 0, 0], "at_border": False}
  return image, record


def align_one_photo(path: str, key: str, cfg, out_dir: str) -> dict[str, Any]:
  """Aligns one photo's faces, writes their PNGs, returns the photo's JSON record."""
  try:
    photo = align.check_photo(image_io.read_rgb(path), path)
    if not cfg.enabled:
      if photo.shape[0] != photo.shape[1]:
        logging.warning("%s: %dx%d is not square, so not an FFHQ-aligned face; taken as "
                        "aligned (align.enabled=False), it is stretched to %d x %d", path,
                        photo.shape[1], photo.shape[0], cfg.output_size, cfg.output_size)
      image, rec = _pre_aligned(photo, cfg.output_size)
      faces = [(rec, image)]
    else:
      faces = []
      detect_on = align.read_for_detection(path, photo)
      for idx, det, aligned in align.align_photo(photo, cfg.face_policy, source=path,
                                                 output_size=cfg.output_size,
                                                 upsample=cfg.upsample, detect_on=detect_on):
        faces.append(({"face_index": idx, "box": list(det.box),
                       "corners": aligned.corners, "valid": aligned.valid,
                       "at_border": det.at_border(photo.shape)}, aligned.image))
  except (align.FaceAlignmentError, ValueError) as e:
    error, orientation = str(e), image_io.exif_orientation(path)
    if orientation != 1:
      error += (f" (Its EXIF orientation tag is {orientation}: viewers show it rotated, but"
                " its pixels are read as stored, as the official code reads them; rotate the"
                " file's pixels first, e.g. PIL.ImageOps.exif_transpose.)")
    return {"source": path, "sha256": file_sha256(path), "error": error, "faces": []}
  records = []
  for rec, image in faces:
    fid = face_id(key, rec["face_index"])
    png = os.path.join(out_dir, "aligned", fid + ".png")
    os.makedirs(os.path.dirname(png), exist_ok=True)
    image_io.write_png(png, image)
    records.append({"id": fid, "aligned_png": os.path.relpath(png, out_dir), **rec})
  return {"source": path, "sha256": file_sha256(path), "error": None, "faces": records,
          "photo_size": [int(photo.shape[1]), int(photo.shape[0])]}


def same_photo(record: dict[str, Any], path: str) -> bool:
  """Whether the photo aligned in `record` is the file now at `path` (not a changed photo,
  or another folder's photo of the same name). Records of older versions have no sha256:
  their path is compared."""
  if "sha256" in record:
    return record["sha256"] == file_sha256(path)
  return os.path.abspath(record["source"]) == os.path.abspath(path)


def align_settings(config) -> dict[str, Any]:
  """The config fields the aligned faces depend on (run_settings)."""
  return run_settings.select(config, ("align",), exclude=("align.on_error",))


# Fields encode_settings leaves out while they are unused, or older versions did not record
# (run_settings.check's optional).
OPTIONAL_ENCODE_FIELDS = ("projection.lpips_weights", "fingerprints")


def encoder_weights(config) -> dict[str, str]:
  """{name: weights folder} of the networks the W+ codes come from (a latents file's codes
  are checked against the file itself: encode_latents_file)."""
  if config.method == "e4e":
    return {"e4e": config.e4e.weights}
  if config.method == "projection":
    return {"generator": config.generator.weights,
            **({"projection.lpips": config.projection.lpips_weights}
               if config.projection.lpips else {})}
  return {}


def encode_settings(config) -> dict[str, Any]:
  """The config fields the W+ codes depend on, and what their weights folders hold
  (run_settings)."""
  method_fields = {"e4e": ("e4e",), "projection": ("projection",),
                   "latents": ("latents_file",)}[config.method]
  unused = ("projection.lpips_weights",) if not config.projection.lpips else ()
  return {**run_settings.select(
      config, ("seed", "method", "generator", *method_fields),
      exclude=(*run_settings.GRAPH_FIELDS, "e4e.batch_size", "projection.batch_size",
               *unused)), **weights_lib.fingerprints(encoder_weights(config))}


def shard_photos(root: str, shard: shards.Shard) -> list[tuple[str, str]]:
  """(face key, path) of the shard's photos of `root` (list_photos' order); two photos with
  one key fail."""
  keys: dict[str, str] = {}   # face key -> photo
  for path in list_photos(root):
    key = photo_key(path, root)
    if key in keys:
      raise ValueError(f"{keys[key]} and {path} both map to the face key {key!r} (keys "
                       "replace characters other than letters, digits, '.', '_' and '-' "
                       "with '_', and folders with '__'): rename one of them.")
    keys[key] = path
  return shards.select(list(keys.items()), shard)


def align_stage(config, out_dir: str, shard: shards.Shard
                ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
  """Runs/resumes alignment of the shard's photos; returns (face records in id order,
  per-file errors)."""
  faces, errors = [], []
  records_dir = os.path.join(out_dir, "faces")
  run_settings.check(os.path.join(out_dir, "align_settings.json"), align_settings(config),
                     run_settings.has_files(records_dir),
                     f"the aligned faces in {out_dir}")
  for key, path in shard_photos(config.photos, shard):
    record_path, record = os.path.join(records_dir, key + ".json"), None
    if os.path.exists(record_path):
      with open(record_path) as f:
        record = json.load(f)
      if not same_photo(record, path):
        if record["faces"]:
          raise ValueError(
              f"{path}: this workdir's record of the same key, {record_path}, was made from "
              f"a different photo ({record['source']}, other content). Its faces, codes and "
              "results would be reused for this photo. Use a new --workdir, or, to redo the "
              f"photo, delete that record and what was made from its faces: the files named "
              f"{key}_f<n>.* under {os.path.dirname(out_dir)}/{SUBDIR} and "
              f"{os.path.dirname(out_dir)}/protect.")
        record = None   # no face came of it (an alignment error): align the new photo
    if record is None:
      record = align_one_photo(path, key, config.align, out_dir)
      atomic_write_json(record_path, record)
    if record["error"]:
      if config.align.on_error == "raise":
        raise align.FaceAlignmentError(record["error"])
      logging.warning("skipping %s", record["error"])
      errors.append({"source": path, "error": record["error"]})
    for face in record["faces"]:
      faces.append({**face, "source": path})
  return sorted(faces, key=lambda f: f["id"]), errors


def load_aligned(out_dir: str, face: dict[str, Any], size: int | None = None) -> np.ndarray:
  """uint8 [S, S, 3] aligned face; resized with PIL bilinear to `size` if given."""
  img = image_io.read_rgb(os.path.join(out_dir, face["aligned_png"]))
  if size is not None and img.shape[0] != size:
    img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
  return img


# ------------------------------------------------------------------ stage 2: encoders

def _batches(items: list, size: int):
  for i in range(0, len(items), size):
    yield items[i:i + size]


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
  """Pads the leading axis to `size` by repeating the last item (one compiled shape)."""
  if x.shape[0] == size:
    return x
  return np.concatenate([x, np.repeat(x[-1:], size - x.shape[0], axis=0)])


def require_e4e(path: str, field: str = "") -> None:
  if not os.path.isdir(path):
    where = f"config.{field}: " if field else ""
    raise FileNotFoundError(
        f"{where}e4e weights {path!r} not found. Convert the official e4e_ffhq_encode.pt "
        "first: python tools/convert_checkpoint.py --kind=e4e --input=e4e_ffhq_encode.pt "
        f"--output={path}; or set config.method=projection (or latents).")


def encode_e4e(config, out_dir: str, todo: list[dict[str, Any]]) -> str:
  """Runs the converted e4e encoder on the faces in `todo`; returns a weights description."""
  from clip2protect_jax.convert.e4e import load_converted
  from clip2protect_jax.models.e4e import images_to_input, to_wplus
  path = config.e4e.weights
  require_e4e(path)
  model, params, latent_avg = load_converted(path)
  check_n_latent(config, latent_avg.shape[0], f"e4e checkpoint {path}")
  bs = config.e4e.batch_size
  mesh = parallel.data_mesh(config.devices, bs, "config.e4e.batch_size")
  params, latent_avg = parallel.replicate((params, latent_avg), mesh)
  encode = jax.jit(parallel.split_batch(
      lambda p, x: to_wplus(model.apply({"params": p}, x), latent_avg), mesh, (None, 0)))
  for batch in _batches(todo, bs):
    x = images_to_input(np.stack([load_aligned(out_dir, f, 256) for f in batch]))
    with jax.default_matmul_precision(config.e4e.matmul_precision):
      wplus = np.asarray(encode(params, parallel.shard_batch(pad_batch(x, bs), mesh)))
    for j, face in enumerate(batch):
      atomic_savez(latent_path(out_dir, face["id"]), wplus=wplus[j].astype(np.float32))
  return f"e4e {path}"


def generator_key(seed: int) -> jax.Array:
  """The key that seeds the generator's random init: projection and tuning must agree."""
  return jax.random.split(jax.random.key(seed), 4)[0]


def projection_config(config):
  """config.projection -> projection.ProjectionConfig (checks its values)."""
  from clip2protect_jax import projection
  p = config.projection
  return projection.ProjectionConfig(
      steps=p.steps, lr=p.lr, lr_rampup=p.lr_rampup, lr_rampdown=p.lr_rampdown,
      noise=p.noise, noise_ramp=p.noise_ramp, noise_regularize=p.noise_regularize,
      mse=p.mse, lpips=p.lpips, w_plus=p.w_plus, n_mean_latent=p.n_mean_latent)


def encode_projection(config, out_dir: str, todo: list[dict[str, Any]]) -> str:
  from clip2protect_jax import projection
  base = jax.random.key(config.seed)
  _, lpips_key, stats_key, face_base = jax.random.split(base, 4)
  p = config.projection
  bs = p.batch_size
  mesh = parallel.data_mesh(config.devices, bs, "config.projection.batch_size")
  gen = weights_lib.load_generator(config.generator, generator_key(config.seed))
  check_n_latent(config, gen.model.n_latent, "generator")
  gen_params = parallel.replicate(gen.params, mesh)
  perceptual, lp_desc = None, "none (lpips weight 0)"
  if p.lpips:
    lp_model, lp_vars, lp_desc = weights_lib.load_lpips(p.lpips_weights, lpips_key)
    perceptual = projection.lpips_perceptual(lp_model, parallel.replicate(lp_vars, mesh))
  cfg = projection_config(config)
  mean, std = projection.latent_stats(gen.model, gen_params, stats_key, cfg.n_mean_latent)
  projector = projection.make_projector(gen.model, cfg, perceptual, mesh)
  size = min(256, gen.model.size)
  for batch in _batches(todo, bs):
    u8 = np.stack([load_aligned(out_dir, f, size) for f in batch])
    targets = parallel.shard_batch(pad_batch(u8, bs).astype(np.float32) / 127.5 - 1.0, mesh)
    keys = [image_key(face_base, f["id"]) for f in batch]
    keys = parallel.shard_batch(jnp.stack(keys + [keys[-1]] * (bs - len(batch))), mesh)
    wplus, noises, losses = projection.project(
        gen.model, gen_params, targets, base, cfg, perceptual, image_keys=keys,
        latent_mean=mean, latent_std=std, projector=projector)
    # Read back whole (with a mesh, an eager index into a split array runs collectives).
    wplus, noises = np.asarray(wplus), [np.asarray(n) for n in noises]
    total = np.asarray(losses["total"])
    if not np.all(np.isfinite(wplus[:len(batch)])):
      raise FloatingPointError(
          f"projection gave non-finite W+ codes for {[f['id'] for f in batch]}: lower "
          "config.projection.lr or the noise_regularize weight")
    for j, face in enumerate(batch):
      atomic_savez(latent_path(out_dir, face["id"]), wplus=wplus[j],
                   loss=np.float32(total[j]),
                   **{f"noise_{k}": n[j] for k, n in enumerate(noises)})
  return f"projection ({gen.description}; {lp_desc}; {cfg.steps} steps)"


def check_latents_file(config, shard: shards.Shard) -> None:
  """Before any work: config.latents_file exists, can be read as codes with the generator's
  number of W+ rows (or W codes), and has the 'ids' array a shard needs (codes without ids
  are taken by position over ALL faces)."""
  path = config.latents_file
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config.latents_file={path!r}: no such file.")
  if path.endswith((".pt", ".pth")) and importlib.util.find_spec("torch") is None:
    raise ModuleNotFoundError(
        f"config.latents_file={path!r}: reading a .pt file needs PyTorch, which the runtime "
        "setup does not install: pip install torch==2.13.0 --index-url "
        "https://download.pytorch.org/whl/cpu (bash tools/setup.sh dev has it), or convert "
        "the file where torch is, e.g. python -c \"import numpy, torch; numpy.savez("
        "'latents.npz', wplus=torch.load('latents.pt', map_location='cpu').detach()"
        ".numpy())\".")
  codes, ids = read_latents_file(path)
  if codes.shape[1] != 1:
    check_n_latent(config, codes.shape[1], path)
  if shard.count > 1:
    if ids is None:
      raise ValueError(
          f"config.latents_file={path!r}: codes without an 'ids' array are taken by position "
          f"over ALL faces, and this run has only its shard of the photos"
          f"{shards.describe(shard)}. Give an .npz with an 'ids' array (face ids), or run "
          "this job with num_shards=1.")


def read_latents_file(path: str) -> tuple[np.ndarray, list[str] | None]:
  """W+ (or W) codes from .npy / .npz ('wplus' or the only array, optional 'ids') / .pt;
  a file that is none of these fails naming config.latents_file."""
  ids = None
  if not path.endswith((".npy", ".npz", ".pt", ".pth")):
    raise ValueError(f"config.latents_file={path!r}: latents file must be .npy, .npz or .pt")
  try:
    if path.endswith(".npy"):
      codes = np.load(path, allow_pickle=False)
    elif path.endswith(".npz"):
      with np.load(path, allow_pickle=False) as d:
        names = [k for k in d.files if k != "ids"]
        name = "wplus" if "wplus" in d.files else (names[0] if len(names) == 1 else None)
        if name is None:
          raise ValueError(f"no array 'wplus', and not one array: {d.files}")
        codes = d[name]
        ids = [str(i) for i in d["ids"]] if "ids" in d.files else None
    else:
      import torch
      try:
        codes = torch.load(path, map_location="cpu", weights_only=True)
      except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise ValueError(torch_load_failure(e)) from None
      if not hasattr(codes, "detach"):
        raise ValueError(f"it holds a {type(codes).__name__}, not one tensor of codes")
      codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes, np.float32)
  except (ValueError, OSError, zipfile.BadZipFile) as e:
    why = ("not a numpy array file: numpy takes it for a pickle, which a safe load refuses"
           if "allow_pickle" in str(e) else e)
    raise ValueError(
        f"config.latents_file={path!r} cannot be read as codes ({why}). Give a .npy, an .npz "
        "('wplus' [N, rows, 512], optional 'ids') or a .pt of one tensor (torch.save).") from None
  if codes.ndim == 2:
    codes = codes[:, None, :]
  if codes.ndim != 3:
    raise ValueError(f"{path}: codes must be [N, n_latent, 512] or [N, 512], got "
                     f"{codes.shape}")
  return codes, ids


def encode_latents_file(config, out_dir: str, todo: list[dict[str, Any]],
                        all_faces: list[dict[str, Any]]) -> str:
  codes, ids = read_latents_file(config.latents_file)
  n_latent = num_latents(config)
  if codes.shape[1] == 1:
    codes = np.repeat(codes, n_latent, axis=1)
  check_n_latent(config, codes.shape[1], config.latents_file)
  if ids is None:
    if codes.shape[0] != len(all_faces) and not todo:
      logging.warning("%s: %d codes for %d faces (photos removed?): the codes taken from it "
                      "earlier cannot be matched by position; nothing is taken now",
                      config.latents_file, codes.shape[0], len(all_faces))
      return f"latents file {config.latents_file}"
    if codes.shape[0] != len(all_faces):
      raise ValueError(
          f"{config.latents_file}: {codes.shape[0]} codes for {len(all_faces)} faces. Codes "
          "are taken in the photos' sorted path order (the official e4e's), each photo's "
          "faces in detector order; add an 'ids' array to an .npz to match by face id.")
    # The photos' full paths sorted, as the official e4e sorts its inputs (face ids sort
    # otherwise where characters were replaced: 'a b.jpg' < 'a.jpg', 'a_b.jpg_f0' > ...).
    in_order = sorted(all_faces, key=lambda f: (f["source"], f["face_index"]))
    by_id = {f["id"]: codes[i] for i, f in enumerate(in_order)}
  else:
    by_id = dict(zip(ids, codes))
  missing = [f["id"] for f in todo if f["id"] not in by_id]
  if missing:
    raise ValueError(f"{config.latents_file}: no codes for faces {missing[:5]}")
  # Codes taken from it earlier must be the ones it gives now (not a changed file, nor the
  # face-id order of codes without ids that older versions used).
  todo_ids = {f["id"] for f in todo}
  changed = []
  for fid in (f["id"] for f in all_faces if f["id"] not in todo_ids and f["id"] in by_id):
    with np.load(latent_path(out_dir, fid)) as d:
      if not np.array_equal(d["wplus"], by_id[fid], equal_nan=True):
        changed.append(fid)
  if changed:
    raise ValueError(
        f"{config.latents_file} gives faces {changed[:5]} other codes than it gave them "
        f"before ({out_dir}/latents): the file changed, or an older version took codes "
        "without ids in face-id order. Use a new --workdir, or delete "
        f"{out_dir} (and the protect folder made from it) to take every code anew.")
  for face in todo:
    atomic_savez(latent_path(out_dir, face["id"]), wplus=by_id[face["id"]])
  return f"latents file {config.latents_file}"


def num_latents(config) -> int:
  from clip2protect_jax.models.stylegan2 import num_latents as n
  return n(config.generator.size)


def check_n_latent(config, got: int, source: str) -> None:
  want = num_latents(config)
  if got != want:
    raise ValueError(f"{source} gives {got} W+ rows but config.generator.size="
                     f"{config.generator.size} needs {want}.")


def latent_path(out_dir: str, fid: str) -> str:
  return os.path.join(out_dir, "latents", fid + ".npz")


# ------------------------------------------------------------------ the job

ENCODERS = ("e4e", "projection", "latents")


def check_config(config, shard: shards.Shard, workdir: str | None = None,
                 missing: list[str] | None = None) -> None:
  """Fails early, before any work, on align and invert settings that cannot run (an error
  naming the field): a typo would otherwise skip every photo, or stop the job after
  aligning them. The encoder's weights: weights_lib.missing_folders, finished when each face
  of the shard's photos has its code in `workdir`; the missing ones are added to `missing`
  if given (the caller raises them with its own), else raised. A latents file is always
  needed: the codes taken from it earlier are checked against it."""
  presets.check_choice(config.method, ENCODERS, "method")
  align.check_face_policy(config.align.face_policy)
  presets.check_choice(config.align.on_error, ("skip", "raise"), "align.on_error")
  weights_lib.check_generator(config.generator)
  if config.method in ("e4e", "projection"):
    parallel.check_batch_size(config.devices, config[config.method].batch_size,
                              f"config.{config.method}.batch_size")
  if config.method == "latents":
    check_latents_file(config, shard)
    return
  if config.method == "projection":
    projection_config(config)
  if config.method == "e4e":
    checks = [functools.partial(require_e4e, config.e4e.weights, "e4e.weights")]
  else:
    checks = [functools.partial(weights_lib.require_generator, config.generator.weights,
                                "generator.weights")]
    if config.projection.lpips:
      checks.append(functools.partial(
          weights_lib.require_lpips, config.projection.lpips_weights,
          "projection.lpips_weights", "config.projection.lpips=0 (MSE-only projection)"))
  out_dir = os.path.join(workdir or "", SUBDIR)
  found = weights_lib.missing_folders(checks, bool(workdir) and all_faces_have(
      config, workdir, shard, lambda fid: latent_path(out_dir, fid)))
  if missing is None:
    weights_lib.raise_missing(found)
  else:
    missing.extend(found)


def has_codes(workdir: str) -> bool:
  """Whether workdir/invert holds any W+ code (of this run's faces or others')."""
  return run_settings.has_files(os.path.dirname(latent_path(os.path.join(workdir, SUBDIR),
                                                            "_")))


def all_faces_have(config, workdir: str, shard: shards.Shard,
                   done_path: Callable[[str], str]) -> bool:
  """Whether every photo of the shard has its alignment record in workdir and each of its
  faces the file done_path(face id) (its code, its protected result): a stage with
  nothing left to do, which needs no weights. Reads the records only (no photo)."""
  try:
    photos = shard_photos(config.photos, shard)
  except (FileNotFoundError, ValueError):   # align_stage says what is wrong
    return False
  for key, _ in photos:
    record_path = os.path.join(workdir, SUBDIR, "faces", key + ".json")
    if not os.path.exists(record_path):
      return False
    with open(record_path) as f:
      if not all(os.path.exists(done_path(face["id"])) for face in json.load(f)["faces"]):
        return False
  return True


def run(config, workdir: str, checked: bool = False) -> dict[str, Any]:
  """Aligns and inverts every photo of config.photos into workdir/invert (resumable).
  checked: check_config has run on this config and workdir (pipeline.check_inputs)."""
  shard = shards.resolve(config)
  if not checked:
    check_config(config, shard, workdir)
  out_dir = os.path.join(workdir, SUBDIR)
  os.makedirs(out_dir, exist_ok=True)
  t0 = time.perf_counter()
  faces, errors = align_stage(config, out_dir, shard)
  t_align = time.perf_counter() - t0
  todo = [f for f in faces if not os.path.exists(latent_path(out_dir, f["id"]))]
  # Any code in the folder counts (another shard's, or another photo set's): all of them
  # must come from the recorded settings.
  settings_path = os.path.join(out_dir, "encode_settings.json")
  settings = encode_settings(config)
  run_settings.check(settings_path, settings, has_codes(workdir),
                     f"the W+ codes in {out_dir}/latents", optional=OPTIONAL_ENCODE_FIELDS)
  run_settings.add_missing(settings_path, settings)   # an older record: later runs compare them
  weights = "nothing to encode"
  if config.method == "latents":   # also with nothing to do: checks the codes taken before
    weights = encode_latents_file(config, out_dir, todo, faces)
  elif todo:
    if config.method == "e4e":
      weights = encode_e4e(config, out_dir, todo)
    else:
      weights = encode_projection(config, out_dir, todo)
  t_encode = time.perf_counter() - t0 - t_align
  arrays_path = os.path.join(out_dir, shards.output_name("invert.npz", shard))
  result = collect(out_dir, faces, num_latents(config), config.generator.style_dim,
                   arrays_path)
  summary_path = os.path.join(out_dir, shards.output_name("summary.json", shard))
  if weights == "nothing to encode" and os.path.exists(summary_path):
    with open(summary_path) as f:   # what made the codes: the run that encoded them
      weights = json.load(f).get("weights", weights)
  summary = {"job": "invert", "method": config.method, "weights": weights,
             "photos": config.photos, "shard": dataclasses.asdict(shard),
             "n_faces": len(faces), "encoded_now": len(todo),
             "kept_from_earlier_runs": len(faces) - len(todo), "errors": errors,
             "align_seconds": t_align, "encode_seconds": t_encode,
             "output": os.path.relpath(arrays_path, workdir)}
  atomic_write_json(summary_path, summary)
  print(f"invert{shards.describe(shard)}: {len(faces)} faces ({len(todo)} new, "
        f"{len(errors)} photos skipped) -> {arrays_path}. Method: {weights}")
  return {**summary, "arrays": result}


def collect(out_dir: str, faces: list[dict[str, Any]], n_latent: int, style_dim: int,
            path: str) -> dict[str, np.ndarray]:
  """Gathers the per-face records and latents into `path` (invert/invert.npz; atomic)."""
  wplus = np.zeros((len(faces), n_latent, style_dim), np.float32)
  for i, face in enumerate(faces):
    with np.load(latent_path(out_dir, face["id"])) as d:
      wplus[i] = d["wplus"]
  arrays = {
      "ids": np.array([f["id"] for f in faces], dtype=str),
      "sources": np.array([f["source"] for f in faces], dtype=str),
      "face_index": np.array([f["face_index"] for f in faces], np.int64),
      "boxes": np.array([f["box"] for f in faces], np.float64).reshape(-1, 4),
      "corners": np.array([f["corners"] for f in faces], np.float64).reshape(-1, 4, 2),
      "valid": np.array([f["valid"] for f in faces], np.float64).reshape(-1, 8),
      "at_border": np.array([f["at_border"] for f in faces], bool),
      "wplus": wplus,
  }
  atomic_savez(path, **arrays)
  return arrays


def load_inversion(workdir: str) -> dict[str, np.ndarray]:
  """The arrays of workdir/invert/invert.npz (for later stages)."""
  path = os.path.join(workdir, SUBDIR, "invert.npz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: run the invert job first "
                            "(--config=configs/invert.py).")
  with np.load(path, allow_pickle=False) as d:
    return {k: d[k] for k in d.files}
