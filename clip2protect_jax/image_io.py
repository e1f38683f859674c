"""Image file IO on the host: PNG/JPEG <-> arrays. Writes are atomic (temp file + rename)."""
from __future__ import annotations

import os
import tempfile

import numpy as np
from PIL import Image


def to_uint8(image: np.ndarray) -> np.ndarray:
  """[H, W, 3] float in [-1, 1] (values outside are clipped) -> uint8 [H, W, 3]."""
  return np.clip(np.round((np.asarray(image, np.float64) + 1.0) * 127.5), 0, 255).astype(
      np.uint8)


def write_png(path: str, image_u8: np.ndarray) -> None:
  """Writes uint8 [H, W, 3] to `path` atomically."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(suffix=".png.tmp", dir=folder)
  os.close(fd)
  try:
    Image.fromarray(np.asarray(image_u8, np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def read_rgb(path: str) -> np.ndarray:
  """Reads an image file as uint8 [H, W, 3] (RGB); clear error if it cannot be decoded."""
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: cannot read as an image ({e}); expected a PNG or JPEG "
                     "photo.") from e
