"""Job `protect`: photos -> align -> invert -> tune -> protect -> evaluate -> report.

  python -m clip2protect_jax.main --config=configs/protect.py:demo --workdir=workdir/demo

Stages and what each leaves in the workdir (every file is written atomically; a rerun
skips finished work):
1. align + invert (inversion.run): invert/aligned/*.png at generator resolution,
   invert/latents/*.npz, invert/invert.npz.
2. per batch of `config.batch_size` faces, in one process (no generator is ever written):
   tune (tuning.tune: one generator copy per face, the official cumulative schedule, or
   the joint fast mode's one generator per batch),
   protect (protect.protect: one vmapped, jitted step for the batch), evaluate (cosine
   similarities of every FR model, and dlib's descriptor distance, for the original, the
   reconstruction and the protected face). Writes protect/faces/<id>.png (protected),
   protect/reconstructions/<id>.png and, last, protect/results/<id>.json (the marker that
   the face is done). The cumulative schedule also keeps its carried generator in
   protect/tune_carry so that a resumed run continues the same sequence.
3. protect/photos/<photo key>.png: every protected face pasted back into its photo.
4. protect/metrics.json (PSR per victim at each FAR) and protect/report.html.
A run split into shards (shards.py: several processes, one workdir) does all of this for its
own photos and names the files of step 4 after its shard; a last run with num_shards=1
writes them over every face.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from clip2protect_jax import (align, checkpoints, evaluation, fr_align, image_io, inversion,
                              parallel, presets, protect, report, run_settings, shards, tuning)
from clip2protect_jax import weights as weights_lib
from clip2protect_jax.image_io import atomic_write_json
from clip2protect_jax.losses_clip import compose, load_templates, text_features
from clip2protect_jax.models import stylegan2
from clip2protect_jax.models.face import registry
from clip2protect_jax.models.tokenizer import tokenize

SUBDIR = "protect"
TEMPLATES = os.path.join(os.path.dirname(__file__), "data", "text_templates.json")


# ------------------------------------------------------------------ settings from config

def tuning_settings(config) -> tuning.TuningSettings:
  t = config.tune
  return tuning.TuningSettings(
      steps=t.steps, learning_rate=t.learning_rate, loss_resolution=t.loss_resolution,
      mse_weight=t.mse_weight, lpips_weight=t.lpips_weight, schedule=t.schedule,
      max_resolution=t.max_resolution)


def protect_settings(config) -> protect.ProtectSettings:
  p = config.protect
  return protect.ProtectSettings(
      surrogates=tuple(config.fr.surrogates), steps=p.steps, learning_rate=p.learning_rate,
      latent_weight=p.latent_weight, adversarial_weight=p.adversarial_weight,
      clip_weight=p.clip_weight, trainable_rows=tuple(int(r) for r in p.trainable_rows),
      noise_max_resolution=p.noise_max_resolution, mode=p.mode,
      distortion_scale=p.distortion_scale, num_aug=p.num_aug,
      official_dodging=p.official_dodging, official_clip_shift=p.official_clip_shift,
      official_output_step=p.official_output_step)


# Fields of result_settings that older versions did not record (the inversion's: align,
# method and its encoder's fields; what the weights folders and target photos hold) or that
# it leaves out while unused (LPIPS with weight 0, a missing weights folder):
# compared only where both records have them (run_settings.check).
RESULT_OPTIONAL_FIELDS = ("align", "method", "e4e", "projection", "latents_file",
                          "tune.lpips_weights", "tune.lpips_dtype", "fingerprints")


def result_settings(config) -> dict[str, Any]:
  """The config fields protect/results depend on (run_settings), the inversion's among them:
  a recomputed invert/ (its own records refuse other settings; deleting it is the remedy they
  name) must not leave protected faces made from its old codes; nor may other weights
  converted into the same folders, or another target photo under the same path. Per-image
  and cumulative tuning give each face the same result in any batch, so batch_size counts
  only for the joint schedule."""
  fields = ("seed", "prompt", "source_text", "clip", "target", "fr", "tune", "protect",
            "generator") + (("batch_size",) if config.tune.schedule == "joint" else ())
  # The dodging reference only when set: records made before it existed stay valid.
  fields += ("evaluate.source_references",) if config.evaluate.source_references else ()
  unused = () if config.tune.lpips_weight else ("tune.lpips_weights", "tune.lpips_dtype")
  own = run_settings.select(config, fields, exclude=(*run_settings.GRAPH_FIELDS, *unused))
  names = fr_model_names(config)
  folders = {"generator": config.generator.weights, "clip": config.clip.weights,
             **({"tune.lpips": config.tune.lpips_weights} if config.tune.lpips_weight else {}),
             **{f"fr.{name}": fr_weights_folder(config, name) for name in names}}
  fetched = {f"fr.{name}": registry.get(name).fetched_files for name in names}
  photos = {f"fingerprints.target.{f}": "sha256 " + image_io.file_sha256(config.target[f])
            for f in ("photo", "eval_photo")}
  return {**inversion.align_settings(config), **inversion.encode_settings(config), **own,
          **weights_lib.fingerprints(folders, fetched), **photos}


def fr_model_names(config) -> tuple[str, ...]:
  """Surrogates then victims, each once; checks they are registered and disjoint."""
  surrogates, victims = tuple(config.fr.surrogates), tuple(config.fr.victims)
  for name in surrogates + victims:
    registry.get(name)  # KeyError naming the known models
  if not surrogates:
    raise ValueError("config.fr.surrogates is empty: stage 2 needs at least one FR model")
  both = sorted(set(surrogates) & set(victims))
  if both:
    raise ValueError(f"{both} are both surrogate and victim: a victim must be a black box "
                     "(leave-one-out: remove it from config.fr.surrogates)")
  return surrogates + victims


def fr_weights_folder(config, name: str) -> str:
  """Where FR model `name`'s weights are: config.fr.weights_dir/<its folder>, or 'random'."""
  if config.fr.weights_dir == "random":
    return "random"
  return os.path.join(config.fr.weights_dir, registry.get(name).weights_subdir or name)


def check_inputs(config, workdir: str | None = None) -> None:
  """Fails early, before any work, on a config that cannot run (an error naming the field
  and the remedy): each of these would otherwise stop the job after the inversion, the
  first batch or every face. The weights folders, the inversion's with them, are named in
  one error (weights_lib.missing_folders: finished when each face of the shard's photos is
  protected in `workdir`)."""
  shard = shards.resolve(config)
  missing: list[str] = []   # weights folders, raised at once
  inversion.check_config(config, shard, workdir, missing)
  names = fr_model_names(config)
  evaluation.check_fars(config)
  tuning_settings(config)
  settings = protect_settings(config)
  protect.row_mask(inversion.num_latents(config), settings.trainable_rows)
  presets.check_choice(config.clip.dtype, weights_lib.CLIP_DTYPES, "clip.dtype")
  presets.check_choice(config.tune.lpips_dtype, weights_lib.COMPUTE_DTYPES,
                       "tune.lpips_dtype")
  checks = [functools.partial(weights_lib.require_face_model, name,
                              fr_weights_folder(config, name), "fr.weights_dir")
            for name in names]
  checks += [functools.partial(weights_lib.require_generator, config.generator.weights,
                               "generator.weights"),
             functools.partial(weights_lib.require_clip, config.clip.preset,
                               config.clip.weights, "clip.weights")]
  if config.tune.lpips_weight:
    checks.append(functools.partial(weights_lib.require_lpips, config.tune.lpips_weights,
                                    "tune.lpips_weights", "config.tune.lpips_weight=0"))
  out_dir = os.path.join(workdir or "", SUBDIR)
  weights_lib.raise_missing(missing + weights_lib.missing_folders(
      checks, bool(workdir) and inversion.all_faces_have(
          config, workdir, shard, lambda fid: result_path(out_dir, fid))))
  parallel.check_batch_size(config.devices, config.batch_size, "config.batch_size")
  if config.tune.schedule == "cumulative" and shard.count > 1:
    raise ValueError(
        f"tune.schedule=cumulative carries one generator through every face in order, which "
        f"cannot be split into shards{shards.describe(shard)}: use num_shards=1, or the "
        "per_image schedule.")
  for field in ("photo", "eval_photo"):
    path = config.target[field]
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"config.target.{field}={path!r}: no such file. The paper's targets are CelebA-HQ "
          "photos from AMT-GAN's release (see checkpoints/README.md); any photo of the target "
          "identity works (set crop=() to use its dlib face box). Example photos: "
          "python tools/fetch_assets.py.")
  for photo, crop in (("photo", "crop"), ("eval_photo", "eval_crop")):
    if config.target[crop]:
      with Image.open(config.target[photo]) as im:
        check_crop(config.target[crop], (im.height, im.width), config.target[photo])
    else:   # its largest face: a photo without one would stop the job after the inversion
      path = config.target[photo]
      read_target_crop(image_io.read_rgb(path), path, (), config.align.upsample)
  check_references(config, shard)
  if config.align.enabled and config.align.output_size != config.generator.size:
    logging.warning("config.align.output_size=%d differs from the generator's %d: aligned "
                    "faces are resized (PIL bilinear) for tuning", config.align.output_size,
                    config.generator.size)


# ------------------------------------------------------------------ models

@dataclasses.dataclass
class Loaded:
  """Every network and constant shared by all batches of a run."""
  generator: weights_lib.LoadedGenerator
  lpips_model: Any
  lpips_vars: Any
  models: protect.ProtectModels
  shared: protect.SharedInputs
  fr_params: dict[str, Any]            # every FR model: surrogates and victims
  target_crop01: np.ndarray            # [h, w, 3] in [0, 1], optimisation photo
  target_aligned01: dict[str, np.ndarray]  # aligned surrogate -> its crop of that photo
  target_eval_emb: dict[str, np.ndarray]
  descriptions: dict[str, str]


def read_target(path: str, crop: Sequence[int], upsample: int, aligned_names: Sequence[str]
                ) -> tuple[np.ndarray, dict[str, np.ndarray], tuple[int, int, int, int]]:
  """A target photo's FR inputs: (the official crop [h, w, 3] float32 in [0, 1],
  aligned model -> its aligned crop [h, w, 3] in [0, 1] (landmarks found in the crop box),
  the crop box (l, t, r, b))."""
  photo = image_io.read_rgb(path)
  crop01, (r0, r1, c0, c1) = read_target_crop(photo, path, crop, upsample)
  aligned = {m: fr_align.aligned_crop(photo, registry.get(m).alignment, (c0, r0, c1, r1),
                                      registry.get(m).input_size) for m in aligned_names}
  return crop01, aligned, (c0, r0, c1, r1)


def check_crop(crop: Sequence[int], shape: Sequence[int], path: str
               ) -> tuple[int, int, int, int]:
  """(r0, r1, c0, c1) of a target crop that lies inside a photo of shape (H, W)."""
  if len(crop) != 4:
    raise ValueError(f"target crop for {path} must be (row0, row1, col0, col1), got {crop}")
  r0, r1, c0, c1 = (int(v) for v in crop)
  h, w = shape
  if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w):
    raise ValueError(
        f"target crop (row0, row1, col0, col1) = {(r0, r1, c0, c1)} does not lie inside "
        f"{path} ({h} rows x {w} columns). The default crops are those of the paper's "
        "CelebA-HQ target photos: for another photo set its crop, or crop=() to use its "
        "largest dlib face box.")
  return r0, r1, c0, c1


def photo_embeddings(names: Sequence[str], params: Mapping[str, Any], photos: Mapping[str, str],
                     upsample: int = 1) -> dict[str, dict[str, np.ndarray]]:
  """model (or evaluation.DLIB) -> photo name -> embedding [D] of each photo's largest
  face, fed as a target photo is (read_target, protect.target_embeddings); photos: name ->
  path."""
  nets = tuple(n for n in names if n != evaluation.DLIB)
  out: dict[str, dict[str, np.ndarray]] = {n: {} for n in names}
  for name, path in photos.items():
    crop01, aligned, box = read_target(path, (), upsample, registry.aligned_models(nets))
    emb = protect.target_embeddings(nets, params, jnp.asarray(crop01), aligned)
    for n in nets:
      out[n][name] = np.asarray(emb[n])
    if evaluation.DLIB in names:
      out[evaluation.DLIB][name] = evaluation.dlib_descriptor(image_io.read_rgb(path), box)
  return out


def check_references(config, shard: shards.Shard) -> None:
  """Every photo of the shard has its dodging reference (config.evaluate.source_references),
  showing a face: checked before any work, as a missing one would stop the job after
  tuning."""
  if not config.evaluate.source_references:
    return
  if config.align.face_policy == "all":
    raise ValueError(
        "config.evaluate.source_references gives each photo ONE reference photo, whose "
        "largest face is compared with the photo's face: use align.face_policy=largest, "
        "last or a face index, not 'all'")
  photos = shards.select(inversion.list_photos(config.photos), shard)
  for photo, reference in zip(photos, source_references(config, photos)):
    try:
      align.largest_face_box(image_io.read_rgb(reference), config.align.upsample, reference)
    except align.FaceAlignmentError as e:
      raise align.FaceAlignmentError(
          f"{e} It is the dodging reference of {photo} "
          "(config.evaluate.source_references).") from None


def source_references(config, sources: Sequence[str]) -> list[str | None]:
  """The dodging reference of each photo in `sources`: the file of
  config.evaluate.source_references at the photo's path relative to config.photos, with any
  photo extension (another photo of the same person, as the paper evaluates dodging); None
  each when that field is ''. Each folder is listed once."""
  references = config.evaluate.source_references
  if not references:
    return [None] * len(sources)
  listed: dict[str, list[str]] = {}
  out = []
  for source in sources:
    rel = (os.path.relpath(source, config.photos) if os.path.isdir(config.photos)
           else os.path.basename(source))
    folder, stem = os.path.split(os.path.join(references, os.path.splitext(rel)[0]))
    if folder not in listed:
      listed[folder] = sorted(f for f in (os.listdir(folder) if os.path.isdir(folder) else [])
                              if f.lower().endswith(inversion.PHOTO_EXTENSIONS))
    found = [f for f in listed[folder] if os.path.splitext(f)[0] == stem]
    if len(found) != 1:
      raise FileNotFoundError(
          f"config.evaluate.source_references={references!r}: {source} needs exactly one "
          f"reference photo {os.path.join(folder, stem)}.<jpg|png|...> (another photo of the "
          f"same person), found {found or 'none'}. Set source_references='' to measure "
          "dodging against the original photo.")
    out.append(os.path.join(folder, found[0]))
  return out


def read_target_crop(photo: np.ndarray, path: str, crop: Sequence[int], upsample: int
                     ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
  """([h, w, 3] float32 in [0, 1], (r0, r1, c0, c1)): photo[r0:r1, c0:c1], or its largest
  dlib face box."""
  if crop:
    r0, r1, c0, c1 = check_crop(crop, photo.shape[:2], path)
  else:
    try:
      l, t, r, b = align.largest_face_box(photo, upsample, path)
    except align.FaceAlignmentError as e:   # not "skip this file": a target is needed
      raise align.FaceAlignmentError(
          f"{str(e).removesuffix(', or skip this file.').rstrip('.')}. In a target photo, "
          "give its crop instead: config.target.crop (or eval_crop) = (row0, row1, col0, "
          "col1).") from None
    c0, r0, c1, r1 = align.clip_box((l, t, r, b), photo.shape)
  out = photo[r0:r1, c0:c1]
  if out.size == 0:
    raise ValueError(f"target crop {(r0, r1, c0, c1)} of {path} {photo.shape} is empty")
  return out.astype(np.float32) / 255.0, (r0, r1, c0, c1)


def load_models(config) -> Loaded:
  base = jax.random.key(config.seed)
  lpips_key, clip_key, fr_key = jax.random.split(jax.random.fold_in(base, 1), 3)
  gen = weights_lib.load_generator(config.generator, inversion.generator_key(config.seed))
  lpips_model, lpips_vars, lpips_desc = (None, None, "not used (lpips_weight 0)")
  if config.tune.lpips_weight:
    lpips_model, lpips_vars, lpips_desc = weights_lib.load_lpips(
        config.tune.lpips_weights, lpips_key, jnp.dtype(config.tune.lpips_dtype))
  clip_model, clip_vars, clip_desc = weights_lib.load_clip(
      config.clip.preset, config.clip.weights, clip_key, jnp.dtype(config.clip.dtype))
  fr_params, fr_desc = {}, {}
  for i, name in enumerate(fr_model_names(config)):
    fr_params[name], fr_desc[name] = weights_lib.load_face_model(
        name, fr_weights_folder(config, name), jax.random.fold_in(fr_key, i))
  templates = load_templates(TEMPLATES)
  text = {t: text_features(clip_model, clip_vars, tokenize(compose(templates, t)))
          for t in (config.source_text, config.prompt)}
  shared = protect.SharedInputs(clip_vars, {m: fr_params[m] for m in config.fr.surrogates},
                                text[config.source_text], text[config.prompt])
  upsample = config.align.upsample
  target, target_aligned, _ = read_target(config.target.photo, config.target.crop, upsample,
                                          registry.aligned_models(config.fr.surrogates))
  target_eval, eval_aligned, _ = read_target(config.target.eval_photo,
                                             config.target.eval_crop, upsample,
                                             registry.aligned_models(fr_params))
  eval_emb = protect.target_embeddings(tuple(fr_params), fr_params, jnp.asarray(target_eval),
                                       eval_aligned)
  descriptions = {"generator": gen.description, "lpips": lpips_desc, "clip": clip_desc,
                  **{f"fr/{k}": v for k, v in fr_desc.items()}}
  for what, text_ in descriptions.items():
    if "RANDOM" in text_:
      logging.warning("%s: %s", what, text_)
  return Loaded(gen, lpips_model, lpips_vars, protect.ProtectModels(gen.model, clip_model),
                shared, fr_params, target, target_aligned,
                {k: np.asarray(v) for k, v in eval_emb.items()}, descriptions)


def place_models(loaded: Loaded, mesh) -> Loaded:
  """`loaded` with every parameter and constant array replicated on the mesh's devices (a
  data-parallel run; parallel.replicate); no mesh: `loaded`."""
  if mesh is None:
    return loaded
  gen = loaded.generator
  params, noise, latent_avg, lpips_vars, shared, fr_params = parallel.replicate(
      (gen.params, gen.noise, gen.latent_avg, loaded.lpips_vars, loaded.shared,
       loaded.fr_params), mesh)
  gen = dataclasses.replace(gen, params=params, noise=noise, latent_avg=latent_avg)
  return dataclasses.replace(loaded, generator=gen, lpips_vars=lpips_vars, shared=shared,
                             fr_params=fr_params)


# ------------------------------------------------------------------ per-face inputs

def face_boxes(config, arrays: dict[str, np.ndarray], index: Sequence[int],
               aligned_u8: np.ndarray) -> np.ndarray:
  """[n, 4] FR crop boxes (x1, y1, x2, y2) in generator pixels.

  The photo's dlib face box mapped into the aligned image (the official code detects once
  on its input with MTCNN and reuses the box on generated images; see README). Photos taken
  as already aligned get a dlib detection on the aligned face, else the whole image.
  """
  size = config.generator.size
  out = []
  for j, i in enumerate(index):
    if config.align.enabled:
      out.append(align.box_to_aligned(arrays["boxes"][i], arrays["corners"][i], size))
      continue
    try:
      box = align.largest_face_box(aligned_u8[j], config.align.upsample)
      out.append(np.clip(box, 0, size).astype(np.float64))
    except align.FaceAlignmentError:
      logging.warning("%s: no face found in the pre-aligned image; FR crop = whole image",
                      arrays["ids"][i])
      out.append(np.array([0.0, 0.0, size, size]))
  return np.stack(out).astype(np.float32)


def photo_box(config, arrays: dict[str, np.ndarray], i: int, box: np.ndarray) -> list[float]:
  """Face i's box (l, t, r, b) in its photo's pixels, where dlib's victim locates it: the
  photo's detection; for photos taken as already aligned (whose record box is the whole
  photo), the FR box `box` found in the aligned face (generator pixels), scaled back."""
  if config.align.enabled:
    return [float(v) for v in arrays["boxes"][i]]
  w, h = np.asarray(arrays["corners"][i])[2]   # the SE corner of the whole photo
  scale = np.array([w, h, w, h], np.float64) / config.generator.size
  return [float(v) for v in np.asarray(box, np.float64) * scale]


def face_crops(names: Sequence[str], aligned_u8: np.ndarray, boxes: np.ndarray
               ) -> dict[str, np.ndarray]:
  """"box" -> boxes [n, 4], and per aligned model of `names` -> [n, 2, 3] warps from the
  landmarks of the aligned ORIGINAL faces [n, H, W, 3] uint8 (found inside their boxes)."""
  crops = {"box": boxes}
  for m in registry.aligned_models(names):
    spec = registry.get(m)
    crops[m] = np.stack([fr_align.transform_for(spec.alignment, img, box, spec.input_size)
                         for img, box in zip(aligned_u8, boxes)])
  return crops


def face_noise(config, fid: str, latents_npz: str) -> list[np.ndarray]:
  """The face's noise maps [r, r, 1]: the projection's fitted maps, else N(0, 1) drawn once
  from the face id (frozen in tuning, the initial values in the search)."""
  shapes = stylegan2.noise_shapes(config.generator.size)
  with np.load(latents_npz) as d:
    if all(f"noise_{k}" in d.files for k in range(len(shapes))):
      return [d[f"noise_{k}"].astype(np.float32) for k in range(len(shapes))]
  key = inversion.image_key(jax.random.fold_in(jax.random.key(config.seed), 2), fid)
  return [np.asarray(m[0]) for m in stylegan2.make_noise(key, config.generator.size)]


# ------------------------------------------------------------------ one batch

@functools.lru_cache(maxsize=4)
def _draw_fn(generator: stylegan2.Generator, mesh):
  return jax.jit(parallel.split_batch(functools.partial(protect.render_batch, generator),
                                      mesh, (tuning.BATCH_AXES, 0, 0)))


def run_batch(config, loaded: Loaded, arrays, index: Sequence[int], inv_dir: str,
              carry: Any, mesh=None) -> tuple[list[dict[str, Any]], dict[str, np.ndarray],
                                              Any, dict[str, float]]:
  """Tunes, protects and evaluates faces `index`; returns (records, images, carry, seconds).
  mesh: parallel.data_mesh to split the batch over (`loaded` placed on it: place_models)."""
  size, bs, n = config.generator.size, config.batch_size, len(index)
  ids = [str(arrays["ids"][i]) for i in index]
  faces = [{"aligned_png": os.path.join("aligned", f + ".png")} for f in ids]
  aligned = np.stack([inversion.load_aligned(inv_dir, f, size) for f in faces])
  noise_each = [face_noise(config, f, inversion.latent_path(inv_dir, f)) for f in ids]
  pad = functools.partial(inversion.pad_batch, size=bs)  # one compiled shape per job
  # The batch on the host (numpy; what is sliced or read back is sliced here: with a mesh,
  # an eager slice of a split array runs collectives) and on the devices.
  host = {"noise": [pad(np.stack([nz[k] for nz in noise_each]))
                    for k in range(len(noise_each[0]))],
          "wplus0": pad(arrays["wplus"][list(index)]),
          "sources01": pad(aligned).astype(np.float32) / 255.0,
          "crops": {k: pad(v) for k, v in face_crops(
              tuple(loaded.fr_params), aligned,
              face_boxes(config, arrays, index, aligned)).items()}}
  put = functools.partial(parallel.shard_batch, mesh=mesh)
  noise, wplus0, sources01, crops = (put(host[k]) for k in ("noise", "wplus0", "sources01",
                                                            "crops"))
  boxes = host["crops"]["box"]
  keys = put(jnp.stack([inversion.image_key(jax.random.fold_in(jax.random.key(config.seed), 3),
                                            f) for f in ids + [ids[-1]] * (bs - n)]))
  gen = loaded.generator

  t0 = time.perf_counter()
  ts = tuning_settings(config)
  if ts.schedule == "cumulative":  # padding copies would advance the carried generator
    # One image at a time: on every device at once with a mesh (its inputs not split).
    tuned = tuning.tune(gen.model, loaded.lpips_model, ts, gen.params, loaded.lpips_vars,
                        jnp.asarray(host["wplus0"][:n]), [jnp.asarray(m[:n]) for m in
                                                          host["noise"]],
                        jnp.asarray(host["sources01"][:n] * 2 - 1), carry)
    params = tuning.BatchParams(jax.tree_util.tree_map(lambda x: put(pad(np.asarray(x))),
                                                       tuned.params.per_image),
                                tuned.params.shared)
  else:
    real = put((np.arange(bs) < n).astype(np.float32))  # joint: padding must not pull it
    tuned = tuning.tune(gen.model, loaded.lpips_model, ts, gen.params, loaded.lpips_vars,
                        wplus0, noise, sources01 * 2 - 1, weights=real,
                        mesh=mesh)
    params = tuned.params
  recon = _draw_fn(gen.model, mesh)(params, wplus0, noise)
  jax.block_until_ready(recon)
  t1 = time.perf_counter()

  settings = protect_settings(config)
  consts = protect.prepare_constants(
      loaded.models, settings, params, wplus0, noise,
      {k: crops[k] for k in ("box", *registry.aligned_models(settings.surrogates))},
      sources01, jnp.asarray(loaded.target_crop01), loaded.shared, keys,
      loaded.target_aligned01, mesh)
  protected, state, history = protect.protect(loaded.models, settings, params, consts,
                                              loaded.shared, mesh)
  jax.block_until_ready(protected)
  t2 = time.perf_counter()

  images = {"original": host["sources01"][:n], "reconstruction": np.asarray(recon)[:n],
            "protected": np.asarray(protected)[:n]}
  losses = np.asarray(tuned.losses)
  history = {k: np.asarray(v) for k, v in history.items()}
  references = source_references(config, [str(arrays["sources"][i]) for i in index])
  source_emb = None
  if config.evaluate.source_references:
    emb = photo_embeddings(tuple(loaded.fr_params), loaded.fr_params,
                           {p: p for p in references}, config.align.upsample)
    source_emb = {m: np.stack([e[p] for p in references]) for m, e in emb.items()}
  sims = evaluation.fr_similarities(loaded.fr_params, images,
                                    {k: v[:n] for k, v in host["crops"].items()},
                                    loaded.target_eval_emb, source_emb)
  t3 = time.perf_counter()
  records = []
  for j, fid in enumerate(ids):
    i = index[j]
    records.append({
        "id": fid, "source": str(arrays["sources"][i]), "source_reference": references[j],
        "source_reference_sha256": (image_io.file_sha256(references[j]) if references[j]
                                    else None),
        "devices": parallel.device_span(protected),   # its batch was split over
        "box": [float(v) for v in np.asarray(boxes[j])],
        "fr_warps": {m: v[j].tolist() for m, v in host["crops"].items() if m != "box"},
        "photo_box": photo_box(config, arrays, i, np.asarray(boxes[j])),
        "corners": np.asarray(arrays["corners"][i]).tolist(),
        "valid": np.asarray(arrays["valid"][i]).tolist(),
        "tune": {"steps": ts.steps, "schedule": ts.schedule,
                 "max_resolution": ts.max_resolution,
                 "first_loss": float(losses[0, j]) if ts.steps else None,
                 "final_loss": float(losses[-1, j]) if ts.steps else None},
        "protect": {k: float(v[-1, j]) for k, v in history.items()} if history else {},
        "psnr": {"reconstruction_vs_original": evaluation.psnr(images["reconstruction"][j],
                                                               images["original"][j]),
                 "protected_vs_original": evaluation.psnr(images["protected"][j],
                                                          images["original"][j]),
                 "protected_vs_reconstruction": evaluation.psnr(
                     images["protected"][j], images["reconstruction"][j])},
        "similarity": evaluation.face_similarities(sims, j),
    })
  return records, images, tuned.carry, {"tune": t1 - t0, "protect": t2 - t1,
                                        "evaluate": t3 - t2}


# ------------------------------------------------------------------ cumulative carry

def _carry_path(out_dir: str) -> str:
  return os.path.join(out_dir, "tune_carry")


def save_carry(out_dir: str, carry: Any, last_id: str) -> None:
  """The cumulative schedule's generator + Adam state after face `last_id` (one copy),
  written beside the previous one and swapped in by renames: a stop at any point leaves a
  complete carry (carry_last_id completes a swap cut short)."""
  path = _carry_path(out_dir)
  for leftover in (path + ".tmp", path + ".old"):
    shutil.rmtree(leftover, ignore_errors=True)
  checkpoints.save(path + ".tmp", {"params": carry[0], "opt_state": carry[1]},
                   {"last_id": last_id})
  if os.path.isdir(path):
    os.replace(path, path + ".old")
  os.replace(path + ".tmp", path)
  shutil.rmtree(path + ".old", ignore_errors=True)


def cumulative_resume(ids: Sequence[str], done: Sequence[str], carry_last_id: str | None
                      ) -> list[str]:
  """The finished faces a cumulative run keeps, in sequence order: those up to the face the
  saved carry follows (faces written after it, by a run stopped before it saved the carry,
  are redone: the sequence is deterministic). Raises if the finished faces are not the
  first of the sequence or the carry is not among them (photos added or removed, results
  deleted)."""
  finished = set(done)
  done = [f for f in ids if f in finished]
  if not done:
    return []
  if done != list(ids[:len(done)]):
    first_missing = next(f for f in ids if f not in finished)
    raise RuntimeError(
        f"cumulative tuning: face {first_missing} is not done but later faces are (up to "
        f"{done[-1]}); the sequence changed (new photos?). Use a new --workdir.")
  if carry_last_id is None:
    logging.warning("cumulative tuning: %d faces are done but no carried generator was saved "
                    "after them (a run stopped in its first batch); redoing them", len(done))
    return []
  if carry_last_id not in done:
    raise RuntimeError(
        f"cumulative tuning: the carried generator was saved after face {carry_last_id}, "
        f"but the finished faces end at {done[-1]}; the sequence changed (results deleted or "
        "new photos?). Use a new --workdir.")
  kept = done[:done.index(carry_last_id) + 1]
  if len(kept) < len(done):
    logging.warning("cumulative tuning: redoing %d finished faces after %s, the face the "
                    "saved carry follows (a run stopped before saving it)",
                    len(done) - len(kept), carry_last_id)
  return kept


def carry_last_id(out_dir: str) -> str | None:
  """The face the saved cumulative carry follows, or None if there is none."""
  path = _carry_path(out_dir)
  if not os.path.isdir(path) and checkpoints.is_complete(path + ".tmp"):
    os.replace(path + ".tmp", path)   # save_carry stopped between its two renames
  return checkpoints.load_metadata(path).get("last_id") if os.path.isdir(path) else None


def load_carry(out_dir: str, config, loaded: Loaded) -> Any:
  """The saved carry (cumulative_resume has matched it to the finished faces)."""
  path = _carry_path(out_dir)
  params, ts = loaded.generator.params, tuning_settings(config)
  abstract = {"params": params, "opt_state": jax.eval_shape(
      tuning.make_optimizer(ts).init, tuning.split_params(ts, params)[0])}
  try:
    tree = checkpoints.restore(path, jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract))
  except checkpoints.WeightsMismatchError as e:
    raise RuntimeError(
        f"cumulative tuning: the generator and Adam state in {path} do not fit this run "
        f"(tune.max_resolution={ts.max_resolution}; a carry saved by an older version also "
        "holds Adam moments of the mapping network): resume with the settings it was saved "
        f"with, or use a new --workdir to rerun the sequence. {e}") from e
  # As jax arrays (numpy ones would make the step compile again, and a frozen layer cross to
  # the device at every step).
  return jax.tree_util.tree_map(jnp.asarray, (tree["params"], tree["opt_state"]))


# ------------------------------------------------------------------ the job

class Progress:
  """Log lines with done/total, images/s and ETA (absl logging; one line per update)."""

  def __init__(self, name: str, total: int):
    self.name, self.total, self.done, self.t0 = name, total, 0, time.perf_counter()

  def update(self, n: int) -> None:
    self.done += n
    dt = time.perf_counter() - self.t0
    rate = self.done / max(dt, 1e-9)
    eta = (self.total - self.done) / max(rate, 1e-9)
    bar = "#" * int(20 * self.done / max(self.total, 1))
    logging.info("%s [%-20s] %d/%d faces, %.3f img/s, elapsed %.0fs, ETA %.0fs", self.name,
                 bar, self.done, self.total, rate, dt, eta)


def check_finished_references(config, out_dir: str, done: Sequence[str]) -> None:
  """Each finished face's dodging reference (source_references) must still hold the photo
  its "source" similarities were measured on: SettingsMismatchError naming the face
  otherwise (results of older versions, without the reference's sha256, are not checked)."""
  if not config.evaluate.source_references:
    return
  records = []
  for fid in done:
    with open(result_path(out_dir, fid)) as f:
      records.append(json.load(f))
  references = source_references(config, [r["source"] for r in records])  # one listing
  for fid, record, reference in zip(done, records, references):
    recorded = record.get("source_reference_sha256")
    if recorded and image_io.file_sha256(reference) != recorded:
      raise run_settings.SettingsMismatchError(
          f"face {fid} was measured against another dodging reference photo "
          f"({record['source_reference']}, other content) than {reference} now: its results "
          "would mix two references. Use a new --workdir, restore that photo, or delete "
          f"{result_path(out_dir, fid)} to redo the face.")


def result_path(out_dir: str, fid: str) -> str:
  return os.path.join(out_dir, "results", fid + ".json")


def has_results(workdir: str) -> bool:
  """Whether workdir/protect holds any protected face (of this run's faces or others')."""
  return run_settings.has_files(os.path.dirname(result_path(os.path.join(workdir, SUBDIR),
                                                            "_")))


def write_face(out_dir: str, record: dict[str, Any], images: dict[str, np.ndarray], j: int
               ) -> None:
  fid = record["id"]
  image_io.write_png(os.path.join(out_dir, "faces", fid + ".png"),
                     image_io.to_uint8(images["protected"][j] * 2 - 1))
  image_io.write_png(os.path.join(out_dir, "reconstructions", fid + ".png"),
                     image_io.to_uint8(images["reconstruction"][j] * 2 - 1))
  atomic_write_json(result_path(out_dir, fid), record)  # last: marks the face as done


def paste_back_photos(out_dir: str, arrays: dict[str, np.ndarray], workdir: str,
                      faces_now: Sequence[str]) -> dict[str, str]:
  """protect/photos/<key>.png per source photo with all its protected faces pasted back;
  made if missing or if any of its faces is among `faces_now` (written by this run)."""
  by_source: dict[str, list[int]] = {}
  for i, src in enumerate(arrays["sources"]):
    by_source.setdefault(str(src), []).append(i)
  written, faces_now = {}, set(faces_now)
  for src, idx in by_source.items():
    key = str(arrays["ids"][idx[0]]).rsplit("_f", 1)[0]
    path = os.path.join(out_dir, "photos", key + ".png")
    if not os.path.exists(path) or any(str(arrays["ids"][i]) in faces_now for i in idx):
      photo = image_io.read_rgb(src)
      for i in idx:
        face = image_io.read_rgb(os.path.join(out_dir, "faces", str(arrays["ids"][i]) + ".png"))
        photo = align.paste_back(photo, face, arrays["corners"][i], arrays["valid"][i])
      image_io.write_png(path, photo)
    written[src] = os.path.relpath(path, workdir)
  return written


def run(config, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) every stage for the photos in config.photos."""
  check_inputs(config, workdir)
  shard = shards.resolve(config)
  t_start = time.perf_counter()
  out_dir = os.path.join(workdir, SUBDIR)
  settings_path, resumed = os.path.join(out_dir, "settings.json"), has_results(workdir)
  settings = result_settings(config)
  run_settings.check(settings_path, settings, resumed,
                     f"the protected faces in {out_dir}", optional=RESULT_OPTIONAL_FIELDS)
  if (resumed and not inversion.has_codes(workdir)
      and run_settings.lacks(settings_path, inversion.align_settings(config))):
    raise run_settings.SettingsMismatchError(
        f"the protected faces in {out_dir} were made by an older version, whose record "
        f"({settings_path}) lacks the inversion's settings, from codes no longer in "
        f"{workdir}/{inversion.SUBDIR}: codes computed now could differ from theirs. Restore "
        f"that folder, or delete {out_dir} to protect every face anew.")
  inv = inversion.run(config, workdir, checked=True)
  # invert/'s records have checked the inversion's fields against its codes: an older
  # protect/ record gains them.
  run_settings.add_missing(settings_path, settings)
  arrays = inv["arrays"]
  inv_dir = os.path.join(workdir, inversion.SUBDIR)
  ids = [str(i) for i in arrays["ids"]]
  done = [f for f in ids if os.path.exists(result_path(out_dir, f))]
  check_finished_references(config, out_dir, done)
  cumulative = config.tune.schedule == "cumulative"
  if cumulative:
    done = cumulative_resume(ids, done, carry_last_id(out_dir))
  todo = [i for i, f in enumerate(ids) if f not in set(done)]
  seconds = {"align_invert": time.perf_counter() - t_start, "load": 0.0, "tune": 0.0,
             "protect": 0.0, "evaluate": 0.0}
  logging.info("stage align+invert: %.1fs for %d new faces", seconds["align_invert"],
               inv["encoded_now"])
  logging.info("protect: %d faces, %d done earlier, %d to do", len(ids), len(done), len(todo))
  descriptions = {}
  if todo:
    t0 = time.perf_counter()
    mesh = parallel.data_mesh(config.devices, config.batch_size, "config.batch_size")
    loaded = place_models(load_models(config), mesh)
    descriptions = loaded.descriptions
    seconds["load"] = time.perf_counter() - t0
    carry = (parallel.replicate(load_carry(out_dir, config, loaded), mesh)
             if cumulative and done else None)
    progress = Progress("tune+protect+evaluate", len(todo))
    for start in range(0, len(todo), config.batch_size):
      index = todo[start:start + config.batch_size]
      records, images, carry, sec = run_batch(config, loaded, arrays, index, inv_dir, carry,
                                              mesh)
      for j, record in enumerate(records):
        write_face(out_dir, record, images, j)
      if cumulative:  # after the faces: a stop in between redoes them (cumulative_resume)
        save_carry(out_dir, carry, records[-1]["id"])
      for k, v in sec.items():
        seconds[k] += v
      progress.update(len(index))
    n = len(todo)
    for stage in ("tune", "protect", "evaluate"):
      logging.info("stage %s: %.1fs, %.3f img/s", stage, seconds[stage],
                   n / max(seconds[stage], 1e-9))
    atomic_write_json(os.path.join(out_dir, "descriptions.json"), descriptions)
  elif os.path.exists(os.path.join(out_dir, "descriptions.json")):
    with open(os.path.join(out_dir, "descriptions.json")) as f:
      descriptions = json.load(f)
  photos = paste_back_photos(out_dir, arrays, workdir, [ids[i] for i in todo])
  records = []
  for f in ids:
    with open(result_path(out_dir, f)) as fh:
      records.append(json.load(fh))
  dlib_eval = None
  if config.evaluate.dlib_victim:
    t0 = time.perf_counter()
    dlib_eval = evaluation.dlib_victim(workdir, records, photos, config)
    seconds["evaluate"] += time.perf_counter() - t0
  metrics = evaluation.metrics(config, records, dlib_eval)
  metrics["seconds"] = seconds
  metrics["faces_protected_now"] = len(todo)
  metrics["weights"] = descriptions
  metrics["shard"] = dataclasses.asdict(shard)
  outputs = [shards.output_name(name, shard) for name in ("metrics.json", "report.html")]
  atomic_write_json(os.path.join(out_dir, outputs[0]), metrics)
  if config.report.enabled:
    html = report.build(config, workdir, records, photos, metrics, inv["errors"])
    image_io.atomic_write_bytes(os.path.join(out_dir, outputs[1]), html.encode())
  total = time.perf_counter() - t_start
  print(f"protect{shards.describe(shard)}: {len(ids)} faces ({len(todo)} new) in "
        f"{total:.0f}s -> {out_dir}/{', '.join(outputs)}")
  if shard.count > 1:
    print(f"  when all {shard.count} shards have finished, the same command with "
          "--config.num_shards=1, run once, writes metrics.json and report.html over every "
          "face")
  for what, text_ in descriptions.items():
    if "RANDOM" in text_:
      print(f"  NOTE {what}: {text_}")
  return metrics
