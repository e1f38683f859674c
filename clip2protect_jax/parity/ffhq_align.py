"""Golden item `ffhq_align`: e4e's `utils/alignment.py: align_face` (README_e4e_align.md).

Per photo tag (those whose PNGs are in `<golden>/ffhq_align/`), from the stored landmarks:
- geometry (eye/mouth vectors, x, y, c, quads, qsizes) at 1e-9 absolute;
- the integer decisions (shrink, border, crop, pad, sizes) exactly;
- the warp: our numpy `quad_warp` of `<tag>_pretransform.png` with `<tag>_transform_data`
  against the official 256x256 output, exactly;
- end to end, when the source photo is found next to the golden folder
  (`<golden>/../faces/...`, as named in manifest_e4e.json): the pre-transform image and the
  aligned output from the photo, exactly; and, when dlib is installed, the landmarks our
  detector path finds (dlib decode, `align.read_for_detection`) against the stored ones.
Integers and uint8 images use tol 0 (the README's bound for an independent warp is max
abs <= 1; ours is bit-exact). float64 has no meaning here: the same checks run.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from typing import Any

import numpy as np

from clip2protect_jax import align
from clip2protect_jax.image_io import read_rgb
from clip2protect_jax.parity import Comparison, compare
from clip2protect_jax.parity.e4e import load_e4e_manifest
from clip2protect_jax.parity.recipe import load_arrays

FOLDER = "ffhq_align"
GEOMETRY_TOL = 1e-9
_GEOMETRY = ("eye_left", "eye_right", "eye_avg", "eye_to_eye", "mouth_avg", "eye_to_mouth",
             "x", "y", "c", "quad0", "qsize0")
_PLAN_FLOAT = ("quad_after_shrink", "qsize_after_shrink", "quad_after_crop", "quad_final",
               "transform_data")
_PLAN_INT = ("shrink", "size_after_shrink", "border", "crop", "crop_applied",
             "size_after_crop", "pad_raw", "pad_applied", "pad", "size_pre_transform")


def _abs_compare(item: str, name: str, ours: Any, golden: Any, tol: float) -> Comparison:
  """compare() with `scaled` replaced by the absolute error (geometry tolerance is absolute)."""
  c = compare(item, name, ours, golden, tol)
  return Comparison(c.item, c.output, c.max_abs, c.max_abs, c.rel_l2, tol)


def photo_path(golden_dir: str, source: str) -> str:
  """manifest 'shared/faces/...' -> <golden>/../faces/..."""
  rel = source.split("/", 1)[1] if source.startswith("shared/") else source
  return os.path.normpath(os.path.join(golden_dir, os.pardir, rel))


def run(item: str, golden_dir: str, manifest: dict[str, Any],
        float64: bool = False) -> list[Comparison]:
  del manifest, float64
  photos = load_e4e_manifest(golden_dir)["procedures"]["ffhq_align"]["photos"]
  data = load_arrays(golden_dir, os.path.join(FOLDER, "ffhq_align.npz"))
  results: list[Comparison] = []
  for photo in photos:
    tag = photo["tag"]
    pre_png = os.path.join(golden_dir, FOLDER, photo["pretransform_png"])
    if f"{tag}_lm" not in data or not os.path.exists(pre_png):
      continue
    g = {k[len(tag) + 1:]: data[k] for k in data if k.startswith(tag + "_")}
    geometry = align.ffhq_geometry(g["lm"])
    for name in _GEOMETRY:
      results.append(_abs_compare(item, f"{tag}/{name}", geometry[name], g[name],
                                  GEOMETRY_TOL))
    plan = align.plan_alignment(geometry["quad0"], geometry["qsize0"], g["src_size"])
    for name in _PLAN_FLOAT:
      results.append(_abs_compare(item, f"{tag}/{name}", getattr(plan, name), g[name],
                                  GEOMETRY_TOL))
    for name in _PLAN_INT:
      results.append(compare(item, f"{tag}/{name}", np.asarray(getattr(plan, name)),
                             g[name], 0.0))
    blur = plan.blur_sigma if plan.pad_applied else 0.0
    results.append(_abs_compare(item, f"{tag}/blur_sigma", blur,
                                np.nan_to_num(g["blur_sigma"]), GEOMETRY_TOL))
    pre = read_rgb(pre_png)
    warped = align.quad_warp(pre, g["transform_data"], align.OUTPUT_SIZE)
    results.append(compare(item, f"{tag}/warp_from_pretransform", warped, g["aligned"], 0.0))
    src = photo_path(golden_dir, photo["source"])
    if os.path.exists(src):
      img = read_rgb(src)
      sha = hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()
      if sha != photo["source_decoded_sha256"]:
        # A different JPEG decoder: the from-photo checks would test the decoder, not us.
        # Reported as a failure (sum of pixels vs the golden decoder's), not skipped.
        results.append(compare(item, f"{tag}/decoded_photo_sum(decoder differs)",
                               np.int64(img.sum()), photo["source_decoded_sum"], 0.0))
        continue
      results.append(compare(item, f"{tag}/pretransform_from_photo",
                             align.pretransform_image(img, plan), pre, 0.0))
      aligned = align.align_face(img, g["lm"])
      results.append(compare(item, f"{tag}/aligned_from_photo", aligned.image, g["aligned"],
                             0.0))
      if importlib.util.find_spec("dlib") is not None:
        dets = align.detect_faces(align.read_for_detection(src, img), source=src)
        ours = dets[-1].landmarks if dets else np.full((68, 2), np.inf)  # official: last
        results.append(compare(item, f"{tag}/landmarks_detected", ours, g["lm"], 0.0))
  if not results:
    raise FileNotFoundError(f"{golden_dir}/{FOLDER}: no photo with both landmarks and "
                            "its pretransform PNG; nothing to compare.")
  return results
