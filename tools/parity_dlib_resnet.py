"""Parity of the Flax DlibResNet (face-api's quantised weights) vs dlib's C++ descriptor.

  python tools/parity_dlib_resnet.py [--weights checkpoints/face-api]
      [--photos assets/photos,../shared/faces/deepface] [--limit 8] [--batch 8]
      [--upsample 1]

Per photo: dlib HOG detection (--upsample), largest face, 5-point landmarks,
`dlib.get_face_chip(img, shape5, size=150, padding=0.25)`; then on that same chip
`face_recognition_model_v1.compute_face_descriptor(chip)` (the aligned-chip overload) vs
`DlibResNet` on the chip's pixels as float32. One line per face: cosine, euclidean
distance, max-abs error and relative error ||ours - dlib|| / ||dlib|| of the raw 128-D
descriptors, then the euclidean distance matrices of both (dlib's same-person threshold is
0.6). `--limit` caps the photos taken from each folder (sorted by name).
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

_EXTS = (".jpg", ".jpeg", ".png")


def list_images(folder: str, limit: int) -> list[str]:
  """Image files under `folder` (recursively, sorted), at most `limit`."""
  out = []
  for root, _, files in os.walk(folder):
    out += [os.path.join(root, f) for f in files if f.lower().endswith(_EXTS)]
  return sorted(out)[:limit]


def face_chips(paths: list[str], upsample: int = 1) -> tuple[list[str], np.ndarray]:
  """(paths with a face, [N, 150, 150, 3] uint8 chips of their largest face)."""
  import dlib

  from clip2protect_jax import align, image_io
  detector = dlib.get_frontal_face_detector()
  sp, _ = align.dlib_descriptor_models()
  names, chips = [], []
  for path in paths:
    img = np.ascontiguousarray(image_io.read_rgb(path))
    rects = detector(img, upsample)
    if not rects:
      continue
    shape = sp(img, max(rects, key=lambda r: r.area()))
    chips.append(dlib.get_face_chip(img, shape, size=150, padding=0.25))
    names.append(path)
  return names, np.stack(chips) if chips else np.zeros((0, 150, 150, 3), np.uint8)


def dlib_descriptors(chips: np.ndarray) -> np.ndarray:
  """dlib C++ descriptors [N, 128] float64 of aligned 150x150 uint8 chips."""
  from clip2protect_jax import align
  _, fr = align.dlib_descriptor_models()
  return np.array([np.array(fr.compute_face_descriptor(np.ascontiguousarray(c)))
                   for c in chips], np.float64)


def flax_descriptors(params, chips: np.ndarray, batch: int = 8) -> np.ndarray:
  """DlibResNet descriptors [N, 128] float64 of the same chips (one jit, fixed batch)."""
  import jax

  from clip2protect_jax.models.face.dlib_resnet import DlibResNet
  fn = jax.jit(lambda p, x: DlibResNet().apply({"params": p}, x))
  out = []
  for i in range(0, len(chips), batch):
    x = chips[i:i + batch].astype(np.float32)
    n = len(x)
    x = np.concatenate([x, np.zeros((batch - n, *x.shape[1:]), np.float32)])
    out.append(np.asarray(fn(params, x))[:n])
  return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 128))


def metrics(ours: np.ndarray, ref: np.ndarray) -> dict[str, np.ndarray]:
  """Per-row cosine, euclidean distance, max-abs and relative error of ours vs ref."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  nr = np.linalg.norm(ref, axis=1)
  dist = np.linalg.norm(ours - ref, axis=1)
  return {"cosine": np.sum(ours * ref, 1) / (np.linalg.norm(ours, axis=1) * nr),
          "dist": dist, "max_abs": np.abs(ours - ref).max(1), "rel": dist / nr,
          "norm": nr}


def distances(d: np.ndarray) -> np.ndarray:
  return np.linalg.norm(d[:, None] - d[None], axis=-1)


def parity_report(weights: str = "checkpoints/face-api",
                  folders: tuple[str, ...] = ("assets/photos", "../shared/faces/deepface"),
                  limit: int = 8, batch: int = 8, upsample: int = 1
                  ) -> dict[str, np.ndarray]:
  """Prints one line per face (and the distance matrices); returns the metrics."""
  from clip2protect_jax.convert.dlib_resnet import load_dlib_resnet
  paths = [p for f in folders if os.path.isdir(f) for p in list_images(f, limit)]
  t = time.perf_counter()
  names, chips = face_chips(paths, upsample)
  t_chips = time.perf_counter() - t
  ref = dlib_descriptors(chips)
  t = time.perf_counter()
  ours = flax_descriptors(load_dlib_resnet(weights), chips, batch)
  t_flax = time.perf_counter() - t
  m = metrics(ours, ref)
  print(f"{len(names)} faces from {len(paths)} photos (chips {t_chips:.1f} s, Flax incl. "
        f"jit {t_flax:.1f} s)")
  print(f"{'face':44s} {'cosine':>9s} {'eucl':>7s} {'maxabs':>7s} {'rel':>7s} {'|dlib|':>6s}")
  for i, name in enumerate(names):
    print(f"{os.path.relpath(name)[-44:]:44s} {m['cosine'][i]:9.6f} {m['dist'][i]:7.4f} "
          f"{m['max_abs'][i]:7.4f} {m['rel'][i]:7.4f} {m['norm'][i]:6.3f}")
  if names:
    print(f"{'worst':44s} {m['cosine'].min():9.6f} {m['dist'].max():7.4f} "
          f"{m['max_abs'].max():7.4f} {m['rel'].max():7.4f}")
    dr, do = distances(ref), distances(ours)
    iu = np.triu_indices(len(names), 1)
    same = (dr[iu] < 0.6) == (do[iu] < 0.6)
    print(f"pairwise distances: max |ours - dlib| {np.abs(dr - do).max():.4f}; "
          f"same/different decision (0.6) agrees on {same.sum()}/{same.size} pairs")
  return {**m, "names": np.array(names), "ref": ref, "ours": ours}


def main() -> None:
  import argparse
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--weights", default="checkpoints/face-api")
  ap.add_argument("--photos", default="assets/photos,../shared/faces/deepface",
                  help="comma-separated folders")
  ap.add_argument("--limit", type=int, default=8, help="photos per folder")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--upsample", type=int, default=1, help="dlib HOG detector upsampling")
  a = ap.parse_args()
  parity_report(a.weights, tuple(f for f in a.photos.split(",") if f), a.limit, a.batch,
                a.upsample)


if __name__ == "__main__":
  main()
