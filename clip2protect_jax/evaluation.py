"""Evaluation of protected faces (REFERENCE.md section 7): similarities, PSR, PSNR.

Differentiable FR models (surrogates and victims) see the generator-resolution image with
the face box, as in the search. dlib's C++ ResNet descriptor, a real FR model trained
independently of anything here, is the black-box victim: it sees the photo with the
protected face pasted back, as a third party would.

PSR (protection success rate): impersonation = share of faces whose similarity to the
target's EVALUATION photo passes the victim's threshold at a FAR; dodging = share whose
similarity to the source falls below it: to another photo of the source's person
(config.evaluate.source_references, as the paper measures it), else to the original photo.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clip2protect_jax import align, image_io, protect
from clip2protect_jax.models.face import registry

IMAGE_KINDS = ("original", "reconstruction", "protected")
# dlib's documented operating point: same person when the descriptor distance < 0.6
# (99.38% on LFW). Thresholds at calibrated FARs are the subject of tools/calibrate_*.
DLIB_DISTANCE_THRESHOLD = 0.6
DLIB = "dlib"   # the C++ descriptor's name in metrics and calibration (not a registry model)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR in dB of two images in [0, 1] (after 8-bit quantisation, as saved)."""
  qa = np.rint(np.clip(a, 0, 1) * 255.0)
  qb = np.rint(np.clip(b, 0, 1) * 255.0)
  mse = float(np.mean((qa - qb) ** 2))
  return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


@functools.lru_cache(maxsize=16)
def _embed_fn(name: str):
  return jax.jit(lambda p, x, b: protect.fr_embeddings((name,), {name: p}, x, b)[name])


def fr_similarities(fr_params: Mapping[str, Any], images: Mapping[str, np.ndarray],
                    crops: Mapping[str, np.ndarray], target_eval_emb: Mapping[str, np.ndarray],
                    source_emb: Mapping[str, np.ndarray] | None = None
                    ) -> dict[str, dict[str, dict[str, np.ndarray]]]:
  """model -> {"target" | "source": {image kind: cos [n]}}.

  images: kind -> [n, H, W, 3] in [0, 1] ("original" must be present); crops: "box" ->
  [n, 4] in those pixels, aligned model -> [n, 2, 3] warps (see protect.fr_embeddings);
  target_eval_emb: model -> [D]; source_emb: model -> [n, D], each face's dodging
  reference (another photo of its person), or None: the original image is the reference.
  """
  out = {}
  for name, params in fr_params.items():
    mine = {k: jnp.asarray(v) for k, v in crops.items() if k in ("box", name)}
    emb = {k: _embed_fn(name)(params, jnp.asarray(v), mine) for k, v in images.items()}
    source = emb["original"] if source_emb is None else jnp.asarray(source_emb[name])
    out[name] = {
        "target": {k: np.asarray(registry.cosine_similarity(e, target_eval_emb[name][None]))
                   for k, e in emb.items()},
        "source": {k: np.asarray(registry.cosine_similarity(e, source)) for k, e in emb.items()},
    }
  return out


# ------------------------------------------------------------------ dlib black box

def dlib_descriptor(photo: np.ndarray, box: Sequence[float]) -> np.ndarray:
  """dlib's 128-D descriptor of the face in `box` (l, t, r, b photo pixels) of uint8 RGB."""
  dlib = align.import_dlib()
  predictor, descriptor = align.dlib_descriptor_models()
  rect = dlib.rectangle(*(int(round(v)) for v in box))
  img = np.ascontiguousarray(photo)
  return np.asarray(descriptor.compute_face_descriptor(img, predictor(img, rect)), np.float64)


def dlib_victim(workdir: str, records: Sequence[dict[str, Any]], photos: Mapping[str, str],
                config) -> dict[str, Any]:
  """dlib descriptor distances to the target's evaluation photo and to the source (each
  record's "source_reference" photo, else the original photo), for the original photo, the
  reconstruction pasted back (what the generator alone does to the face) and the protected
  photo. The face is located by its original detection box, so the victim is measured on
  recognition, not detection; reference photos by their largest face, its box clipped to
  the photo as for their FR embeddings (pipeline.photo_embeddings)."""
  @functools.lru_cache(maxsize=None)
  def largest_face(path: str) -> np.ndarray:
    photo = image_io.read_rgb(path)
    box = align.largest_face_box(photo, config.align.upsample, path)
    return dlib_descriptor(photo, align.clip_box(box, photo.shape))

  target_desc = largest_face(config.target.eval_photo)
  per_face = {}
  for r in records:
    original = image_io.read_rgb(r["source"])
    recon_face = image_io.read_rgb(os.path.join(workdir, "protect", "reconstructions",
                                                r["id"] + ".png"))
    photos_by_kind = {
        "original": original,
        "reconstruction": align.paste_back(original, recon_face, r["corners"], r["valid"]),
        "protected": image_io.read_rgb(os.path.join(workdir, photos[r["source"]]))}
    desc = {k: dlib_descriptor(v, r["photo_box"]) for k, v in photos_by_kind.items()}
    reference = r.get("source_reference")
    per_face[r["id"]] = dlib_distances(desc, target_desc,
                                       largest_face(reference) if reference else None)
  return {"threshold": DLIB_DISTANCE_THRESHOLD, "faces": per_face}


def dlib_distances(desc: Mapping[str, np.ndarray], target_desc: np.ndarray,
                   source_desc: np.ndarray | None = None) -> dict[str, dict[str, float]]:
  """Image kind -> descriptor ("original" included) -> {"target_distance" | "source_distance":
  {kind: euclidean distance to the target's descriptor | to source_desc (another photo of
  the source's person), else to the original's}}."""
  source = desc["original"] if source_desc is None else source_desc
  return {"target_distance": {k: float(np.linalg.norm(d - target_desc)) for k, d in desc.items()},
          "source_distance": {k: float(np.linalg.norm(d - source)) for k, d in desc.items()}}


def face_similarities(sims: Mapping[str, Any], j: int) -> dict[str, Any]:
  """Face j of fr_similarities' output: model -> reference -> image kind -> float cos."""
  return {m: {ref: {k: float(v[j]) for k, v in by_img.items()}
              for ref, by_img in per_model.items()} for m, per_model in sims.items()}


# ------------------------------------------------------------------ aggregation

def _rates(sim_target: np.ndarray, sim_source: np.ndarray, thresholds: Mapping[float, float],
           larger_is_closer: bool = True) -> dict[str, dict[str, float]]:
  out = {}
  for far, thr in thresholds.items():
    if larger_is_closer:
      imp, dod = sim_target > thr, sim_source <= thr
    else:  # distances
      imp, dod = sim_target < thr, sim_source >= thr
    out[str(far)] = {"impersonation_psr": float(np.mean(imp)),
                     "dodging_psr": float(np.mean(dod)), "threshold": float(thr)}
  return out


def check_fars(config) -> None:
  """Every FR model of the run has a threshold at each of config.evaluate.fars (checked
  before any work: metrics needs them after every face is done)."""
  for name in (*config.fr.surrogates, *config.fr.victims):
    thresholds = registry.get(name).thresholds
    missing = [f for f in map(float, config.evaluate.fars) if f not in thresholds]
    if missing:
      raise ValueError(f"config.evaluate.fars: {name} has no threshold at FAR {missing} "
                       f"(it has {sorted(thresholds)}; tools/calibrate_thresholds.py "
                       "calibrates others)")


def metrics(config, records: Sequence[dict[str, Any]], dlib_eval: dict[str, Any] | None
            ) -> dict[str, Any]:
  """metrics.json: per FR model (role surrogate/victim) and image kind, PSR at each FAR and
  mean similarities; the same for dlib (distance threshold) when evaluated."""
  fars = tuple(float(f) for f in config.evaluate.fars)
  out: dict[str, Any] = {"n_faces": len(records), "face_ids": [r["id"] for r in records],
                         "prompt": config.prompt,
                         "mode": config.protect.mode, "target": config.target.photo,
                         "target_eval": config.target.eval_photo,
                         "dodging_reference": (config.evaluate.source_references or
                                               "the original photo"), "models": {}}
  if not records:
    return out
  check_fars(config)
  for name in (*config.fr.surrogates, *config.fr.victims):
    spec = registry.get(name)
    entry = {"role": "surrogate" if name in config.fr.surrogates else "victim",
             "thresholds_from": spec.threshold_source, "by_image": {}}
    for kind in IMAGE_KINDS:
      tgt = np.array([r["similarity"][name]["target"][kind] for r in records])
      src = np.array([r["similarity"][name]["source"][kind] for r in records])
      entry["by_image"][kind] = {
          "mean_cos_target": float(tgt.mean()), "mean_cos_source": float(src.mean()),
          "far": _rates(tgt, src, {f: spec.thresholds[f] for f in fars})}
    out["models"][name] = entry
  if dlib_eval is not None:
    calibrated = registry.calibrated().get(DLIB, {}).get("thresholds", {})
    by_far = {f: -calibrated[f"{f:g}"] for f in fars if f"{f:g}" in calibrated}
    entry = {"role": "victim (black box, dlib C++ ResNet descriptor on the pasted-back photo)",
             "thresholds_from": "dlib's documented distance 0.6" + (
                 "; by FAR: " + registry.get_calibration_source(DLIB) if by_far else ""),
             "by_image": {}}
    faces = dlib_eval["faces"]
    for kind in IMAGE_KINDS:
      tgt = np.array([faces[r["id"]]["target_distance"][kind] for r in records])
      src = np.array([faces[r["id"]]["source_distance"][kind] for r in records])
      entry["by_image"][kind] = {
          "mean_distance_target": float(tgt.mean()), "mean_distance_source": float(src.mean()),
          "distance": _rates(tgt, src, {dlib_eval["threshold"]: dlib_eval["threshold"]},
                             larger_is_closer=False)}
      if by_far:
        entry["by_image"][kind]["far"] = _rates(tgt, src, by_far, larger_is_closer=False)
    out["models"][DLIB] = entry
    out["dlib_faces"] = faces
  return out
