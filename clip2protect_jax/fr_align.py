"""Differentiable face alignment for FR models that need a landmark-aligned input.

An alignment is an affine map, stored as data: `transform` [2, 3] takes an OUTPUT pixel
(u, v, 1) to the INPUT pixel (x, y) it samples (pixel centres at integers, as dlib and
OpenCV). It is computed once, on the host, from the landmarks of the ORIGINAL photo (or
aligned face) and then applied to any image of the same geometry with `warp_affine`, a
jittable bilinear sampler, so the aligned crop of a generated image stays differentiable
and one compilation serves every face.

Alignments (`transform_for`):
  dlib_chip  dlib's `get_face_chip(img, shape5, 150, 0.25)` geometry, taken from
             `dlib.get_face_chip_details` (the descriptor's own chip).
  arcface    similarity transform of 5 points (eye centres, nose tip, mouth corners, from
             the 68 dlib landmarks) onto the standard ArcFace 112x112 template.
  loose      a square crop around the face: centre of the 68 landmarks' box, side
             `LOOSE_SCALE` times its longer side, no rotation.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clip2protect_jax import align, augment

ALIGNMENTS = ("dlib_chip", "arcface", "loose")
DLIB_CHIP_PADDING = 0.25
# ArcFace / insightface 5-point template for 112x112 crops (x, y): left eye, right eye,
# nose tip, left mouth corner, right mouth corner (image left/right).
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)
LOOSE_SCALE = 1.3


# ------------------------------------------------------------------ the warp (JAX)

def warp_affine(images: jax.Array, transforms: jax.Array, out_hw: Sequence[int],
                supersample: int = 1) -> jax.Array:
  """Bilinear affine warp, zero outside the image.

  images [N, H, W, C] (any range); transforms [N, 2, 3] output pixel -> input pixel;
  -> [N, out_h, out_w, C]. supersample s (static) averages s x s bilinear samples spread
  over each output pixel's footprint: a box prefilter for strong downscaling (a 1024 face
  to a 112 crop) so the crop does not alias; s = 1 is plain bilinear sampling.
  """
  out_h, out_w = int(out_hw[0]), int(out_hw[1])
  offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
  v = (np.arange(out_h)[:, None] + offsets[None, :]).reshape(-1)
  u = (np.arange(out_w)[:, None] + offsets[None, :]).reshape(-1)
  vv, uu = np.meshgrid(v, u, indexing="ij")
  grid = jnp.asarray(np.stack([uu, vv, np.ones_like(uu)], -1), jnp.float32)  # [h*s, w*s, 3]

  def one(img, t):
    xy = grid @ t.astype(jnp.float32).T                     # [h*s, w*s, 2] input pixels
    out = augment.sample_bilinear_zeros(img, xy)
    return out.reshape(out_h, supersample, out_w, supersample, -1).mean(axis=(1, 3))

  return jax.vmap(one)(images, jnp.asarray(transforms))


def supersample_for(image_size: int) -> int:
  """Samples per axis for crops out of a generator image of this size (1 up to 255 px,
  4 at 1024): the crops here are 112-224 px of a face that spans about half the image."""
  return max(1, image_size // 256)


# ------------------------------------------------------------------ transforms (host)

def similarity_transform(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
  """Least-squares similarity (Umeyama) taking points `dst` [K, 2] (output pixels) onto
  `src` [K, 2] (input pixels) -> [2, 3] output pixel -> input pixel."""
  dst, src = np.asarray(dst, np.float64), np.asarray(src, np.float64)
  mu_d, mu_s = dst.mean(0), src.mean(0)
  d, s = dst - mu_d, src - mu_s
  cov = s.T @ d / len(dst)
  u, sig, vt = np.linalg.svd(cov)
  sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
  rot = u @ sign @ vt
  scale = np.trace(np.diag(sig) @ sign) / d.var(0).sum()
  a = scale * rot
  return np.concatenate([a, (mu_s - a @ mu_d)[:, None]], axis=1)


def five_points(landmarks68: np.ndarray) -> np.ndarray:
  """68 dlib landmarks -> [5, 2]: eye centres, nose tip, mouth corners (image left first)."""
  lm = np.asarray(landmarks68, np.float64)
  return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def dlib_chip_transform(image: np.ndarray, box: Sequence[float], size: int = 150,
                        padding: float = DLIB_CHIP_PADDING) -> np.ndarray:
  """[2, 3] of dlib's face chip: 5-point landmarks in `box` (l, t, r, b), then
  `get_face_chip_details(shape, size, padding)`; chip corners map to the rotated rect's
  corners, as dlib's get_mapping_to_chip."""
  dlib = align.import_dlib()
  img = np.ascontiguousarray(image)
  rect = dlib.rectangle(*(int(round(v)) for v in box))
  predictor5, _ = align.dlib_descriptor_models()
  details = dlib.get_face_chip_details(predictor5(img, rect), size, padding)
  r = details.rect
  centre = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
  c, s = np.cos(details.angle), np.sin(details.angle)
  rot = np.array([[c, -s], [s, c]])
  corners = np.array([[r.left(), r.top()], [r.right(), r.top()], [r.right(), r.bottom()]])
  to = (corners - centre) @ rot.T + centre
  cols, rows = details.cols, details.rows
  frm = np.array([[0, 0], [cols - 1, 0], [cols - 1, rows - 1]], np.float64)
  # exact affine through three point pairs: [u v 1] @ X = to
  x = np.linalg.solve(np.concatenate([frm, np.ones((3, 1))], 1), to)
  return x.T


def arcface_transform(landmarks68: np.ndarray, size: int = 112) -> np.ndarray:
  """[2, 3] of the ArcFace-aligned size x size crop (template scaled from 112)."""
  return similarity_transform(ARCFACE_112 * (size / 112.0), five_points(landmarks68))


def loose_transform(landmarks68: np.ndarray, size: int) -> np.ndarray:
  """[2, 3] of a square, unrotated crop: landmarks' box centre, side LOOSE_SCALE x its
  longer side, resampled to size x size."""
  lm = np.asarray(landmarks68, np.float64)
  lo, hi = lm.min(0), lm.max(0)
  side = LOOSE_SCALE * float((hi - lo).max())
  scale = side / size
  origin = (lo + hi) / 2 - side / 2 + scale / 2   # output pixel -0.5 -> crop edge
  return np.array([[scale, 0.0, origin[0]], [0.0, scale, origin[1]]])


def landmarks68(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
  """dlib's 68 landmarks [68, 2] of the face in `box` (l, t, r, b) of uint8 RGB `image`."""
  dlib = align.import_dlib()
  _, predictor = align.dlib_models()
  rect = dlib.rectangle(*(int(round(v)) for v in box))
  shape = predictor(np.ascontiguousarray(image), rect)
  return np.array([[p.x, p.y] for p in shape.parts()], np.float64)


def aligned_crop(image: np.ndarray, alignment: str, box: Sequence[float],
                 out_hw: Sequence[int]) -> np.ndarray:
  """[h, w, 3] float32 in [0, 1]: the `alignment` crop of uint8 RGB `image` (a photo on the
  host, e.g. the target), supersampled to its own downscaling factor."""
  t = transform_for(alignment, image, box, out_hw)
  factor = int(np.ceil(np.sqrt(abs(np.linalg.det(t[:, :2].astype(np.float64))))))
  img = jnp.asarray(image[None], jnp.float32) / 255.0
  return np.asarray(warp_affine(img, t[None], out_hw, max(1, factor))[0])


def transform_for(alignment: str, image: np.ndarray, box: Sequence[float],
                  out_hw: Sequence[int]) -> np.ndarray:
  """[2, 3] float32 of `alignment` for the face in `box` of uint8 RGB `image`, producing
  an out_hw crop. The landmarks are found inside `box` (no detection)."""
  if alignment == "dlib_chip":
    t = dlib_chip_transform(image, box, int(out_hw[0]))
  elif alignment == "arcface":
    t = arcface_transform(landmarks68(image, box), int(out_hw[0]))
  elif alignment == "loose":
    t = loose_transform(landmarks68(image, box), int(out_hw[0]))
  else:
    raise ValueError(f"unknown alignment {alignment!r}; known: {ALIGNMENTS}")
  return t.astype(np.float32)
