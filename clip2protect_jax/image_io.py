"""Host file IO: PNG/JPEG <-> arrays, npz, JSON. Every write is atomic (temp file + rename),
so an interrupted job never leaves a truncated file that a rerun would trust."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from typing import Any

import numpy as np
from PIL import Image


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` via a temporary file in the same folder and a rename."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual file mode
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def file_sha256(path: str) -> str:
  """Hex sha256 of the file's bytes."""
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def atomic_savez(path: str, **arrays) -> None:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  atomic_write_bytes(path, buf.getvalue())


def _json_default(x):
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.generic):
    return x.item()
  return str(x)


def atomic_write_json(path: str, obj: Any) -> None:
  """JSON with numpy arrays/scalars as lists/numbers (anything else as its str)."""
  atomic_write_bytes(path, json.dumps(obj, indent=2, default=_json_default).encode())


def to_uint8(image: np.ndarray) -> np.ndarray:
  """[H, W, 3] float in [-1, 1] (values outside are clipped) -> uint8 [H, W, 3]."""
  return np.clip(np.round((np.asarray(image, np.float64) + 1.0) * 127.5), 0, 255).astype(
      np.uint8)


def write_png(path: str, image_u8: np.ndarray) -> None:
  """Writes uint8 [H, W, 3] to `path` atomically (lossless PNG)."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image_u8, np.uint8)).save(buf, format="PNG")
  atomic_write_bytes(path, buf.getvalue())


def read_rgb(path: str) -> np.ndarray:
  """Reads an image file as uint8 [H, W, 3] (RGB), pixels as stored (EXIF orientation is
  not applied, nor by the official code; alpha is dropped); 16-bit greyscale keeps its high
  byte. Clear error if it cannot be decoded."""
  try:
    with Image.open(path) as im:
      if im.mode.startswith("I"):   # 16-bit greyscale (I;16*, or I from older decoders)
        grey = np.asarray(im).astype(np.int64)
        if grey.min() < 0 or grey.max() > 65535:
          raise ValueError(f"mode {im.mode} with values {grey.min()}..{grey.max()}")
        return np.repeat((grey >> 8).astype(np.uint8)[..., None], 3, axis=2)
      if im.mode == "F":
        raise ValueError("floating-point pixels (mode F) have no fixed range")
      return np.asarray(im.convert("RGB"))
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: cannot read as an image ({e}); expected an 8- or 16-bit PNG "
                     "or a JPEG photo.") from e


def exif_orientation(path: str) -> int:
  """The file's EXIF orientation tag (1 = as stored; 3, 6, 8: shown rotated by viewers)."""
  try:
    with Image.open(path) as im:
      return int(im.getexif().get(0x0112, 1))
  except (OSError, ValueError):
    return 1
