"""Parity with the golden vectors made by the OFFICIAL PyTorch code.

Each golden item (a network or a convention) has a runner: a function
`run(item, golden_dir, manifest, float64) -> list[Comparison]` that regenerates the recipe
weights from the manifest, converts them with the project's converter, runs the
project's model on the stored inputs and compares every output it supports.
`tools/parity.py` and the tests both go through `run_item`.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Callable

import numpy as np

# Golden item -> (module that implements it, files in the golden folder it needs).
# An item whose module does not exist yet is reported as unsupported.
# Each module defines `run(item, golden_dir, manifest, float64) -> list[Comparison]`.
ITEMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "stylegan2": ("clip2protect_jax.parity.stylegan2", ("stylegan2.npz",)),
    "irse50": ("clip2protect_jax.parity.face", ("irse50.npz",)),
    "ir152": ("clip2protect_jax.parity.face", ("ir152.npz",)),
    "mobileface": ("clip2protect_jax.parity.face", ("mobileface.npz",)),
    "facenet": ("clip2protect_jax.parity.face", ("facenet.npz",)),
    "resize": ("clip2protect_jax.parity.resize", ("resize.npz",)),
    "clip": ("clip2protect_jax.parity.clip", ("clip.npz",)),
    "clip_preprocess": ("clip2protect_jax.parity.clip_preprocess", ("resize.npz",)),
    "nce_loss": ("clip2protect_jax.parity.nce_loss", ("nce_loss.npz", "clip.npz",
                                                      "text_templates.json")),
    "lpips_vgg": ("clip2protect_jax.parity.lpips", ("lpips_vgg.npz",)),
    "e4e": ("clip2protect_jax.parity.e4e", ("e4e.npz", "manifest_e4e.json")),
    "ffhq_align": ("clip2protect_jax.parity.ffhq_align", ("manifest_e4e.json",
                                                          "ffhq_align/ffhq_align.npz")),
}


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One compared output: `scaled` = max|ours - golden| / max|golden| (golden/README.md)."""
  item: str
  output: str
  max_abs: float
  scaled: float
  rel_l2: float
  tol: float
  rel_l2_tol: float | None = None

  @property
  def ok(self) -> bool:
    good = np.isfinite(self.scaled) and self.scaled <= self.tol
    if self.rel_l2_tol is not None:
      good = good and self.rel_l2 <= self.rel_l2_tol
    return bool(good)

  def line(self) -> str:
    extra = f" rel_l2_tol={self.rel_l2_tol:.0e}" if self.rel_l2_tol is not None else ""
    return (f"{'ok  ' if self.ok else 'FAIL'} {self.item:<10} {self.output:<28} "
            f"max_abs={self.max_abs:.3e} scaled={self.scaled:.3e} rel_l2={self.rel_l2:.3e} "
            f"tol={self.tol:.0e}{extra}")


def compare(item: str, output: str, ours: Any, golden: Any, tol: float,
            rel_l2_tol: float | None = None) -> Comparison:
  """Compares two arrays of equal shape with the golden README's metrics (in float64)."""
  ours = np.asarray(ours, np.float64)
  golden = np.asarray(golden, np.float64)
  if ours.shape != golden.shape:
    raise ValueError(f"{item}/{output}: shape {ours.shape} != golden {golden.shape}")
  diff = np.abs(ours - golden)
  max_abs = float(diff.max()) if diff.size else 0.0
  denom = float(np.abs(golden).max()) if golden.size else 1.0
  scaled = max_abs / denom if denom > 0 else max_abs
  rel_l2 = float(np.linalg.norm(ours - golden) / max(np.linalg.norm(golden), 1e-300))
  if not np.all(np.isfinite(ours)):
    scaled = float("inf")
  return Comparison(item, output, max_abs, scaled, rel_l2, tol, rel_l2_tol)


class UnsupportedItemError(KeyError):
  pass


def supported_items() -> list[str]:
  out = []
  for name, (module, _) in ITEMS.items():
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name != module:
        raise
      continue
    out.append(name)
  return out


def available_items(golden_dir: str) -> list[str]:
  """Supported items whose golden files are present in `golden_dir`."""
  return [name for name in supported_items()
          if all(os.path.exists(os.path.join(golden_dir, f)) for f in ITEMS[name][1])]


def run_item(name: str, golden_dir: str, manifest: dict[str, Any],
             float64: bool = False) -> list[Comparison]:
  if name not in supported_items():
    raise UnsupportedItemError(
        f"golden item {name!r} is not supported; supported: {', '.join(supported_items())}")
  runner: Callable[..., list[Comparison]] = importlib.import_module(ITEMS[name][0]).run
  return runner(name, golden_dir, manifest, float64=float64)
