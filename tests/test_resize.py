"""torch-matching resizes: golden/resize.npz, crop-and-resize with the box as data."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip2protect_jax import parity, resize
from clip2protect_jax.parity.recipe import load_manifest

GOLDEN = "tests/golden"


def torch_bilinear_reference(x: np.ndarray, out_hw) -> np.ndarray:
  """Independent numpy emulation of F.interpolate(bilinear, align_corners=False) on NHWC:
  float32 coordinates (as torch), float64 accumulation (golden README: within 1e-7)."""
  def taps(n, out):
    scale = np.float32(n) / np.float32(out)
    src = np.maximum(scale * (np.arange(out, dtype=np.float32) + np.float32(0.5))
                     - np.float32(0.5), 0).astype(np.float32)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = (src - i0).astype(np.float64)
    return i0, i1, 1 - lam, lam
  r0, r1, a0, a1 = taps(x.shape[1], out_hw[0])
  c0, c1, b0, b1 = taps(x.shape[2], out_hw[1])
  x = x.astype(np.float64)
  rows = a0[None, :, None, None] * x[:, r0] + a1[None, :, None, None] * x[:, r1]
  return b0[None, None, :, None] * rows[:, :, c0] + b1[None, None, :, None] * rows[:, :, c1]


def test_golden_resize():
  results = parity.run_item("resize", GOLDEN, load_manifest(GOLDEN))
  assert all(r.ok for r in results), "\n".join(r.line() for r in results)
  assert {r.output for r in results} == {
      "crop_bilinear112", "box_crop_bilinear112", "crop_bilinear160", "box_crop_bilinear160",
      "crop_nearest112", "img_nearest256"}


def test_crop_and_resize_equals_crop_then_resize_one_compile():
  rng = np.random.default_rng(0)
  img = rng.uniform(-1, 1, (1, 120, 100, 3)).astype(np.float32)
  fn = jax.jit(lambda im, b: resize.crop_and_resize_bilinear(im, b, (24, 20)))
  boxes = [(10.0, 20.0, 90.0, 110.0), (3.5, 0.4, 40.6, 33.5), (0.0, 0.0, 100.0, 120.0),
           (50.2, 60.7, 57.1, 66.4), (-4.0, 100.0, 130.0, 140.0)]
  for x1, y1, x2, y2 in boxes:
    out = np.asarray(fn(img, jnp.asarray([[x1, y1, x2, y2]], jnp.float32)))
    r1, r2 = max(round(y1), 0), min(round(y2), 120)
    c1, c2 = max(round(x1), 0), min(round(x2), 100)
    crop = img[:, r1:r2, c1:c2]
    ref = torch_bilinear_reference(crop, (24, 20))
    assert np.abs(out - ref).max() < 2e-7, (x1, y1, x2, y2)
    np.testing.assert_allclose(out, resize.resize_bilinear(crop, (24, 20)), rtol=0, atol=2e-7)
  assert fn._cache_size() == 1  # the box is data: one compilation for every box


def test_batched_boxes_equal_per_image():
  rng = np.random.default_rng(1)
  imgs = rng.uniform(0, 1, (3, 64, 48, 3)).astype(np.float32)
  boxes = np.array([[0, 0, 48, 64], [5.2, 7.9, 30.3, 50.6], [20, 10, 47, 33]], np.float32)
  batched = np.asarray(resize.crop_and_resize_bilinear(imgs, boxes, (16, 16)))
  for i in range(3):
    one = resize.crop_and_resize_bilinear(imgs[i:i + 1], boxes[i:i + 1], (16, 16))
    np.testing.assert_array_equal(batched[i:i + 1], np.asarray(one))
  assert not np.allclose(batched[0], batched[1])


def test_crop_and_resize_gradient_is_the_adjoint():
  """The op is linear in the image: <A x, y> == <x, A^T y>; A^T y is zero outside the box."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(1, 50, 40, 3)).astype(np.float32))
  y = jnp.asarray(rng.normal(size=(1, 16, 12, 3)).astype(np.float32))
  box = jnp.asarray([[5.0, 10.0, 30.0, 45.0]])
  out, vjp = jax.vjp(lambda im: resize.crop_and_resize_bilinear(im, box, (16, 12)), x)
  (g,) = vjp(y)
  g = np.asarray(g)
  lhs, rhs = float(jnp.sum(out * y)), float(np.sum(np.asarray(x) * g))
  assert abs(lhs - rhs) < 1e-4 * max(1.0, abs(lhs))
  assert np.all(np.isfinite(g)) and np.abs(g[:, 10:45, 5:30]).sum() > 0
  outside = g.copy()
  outside[:, 10:45, 5:30] = 0
  assert not outside.any()
  # Bilinear weights sum to 1 per output pixel, so the adjoint of ones has the same total.
  (g1,) = vjp(jnp.ones_like(y))
  assert np.isclose(float(g1.sum()), y.size, rtol=1e-5)


@pytest.mark.parametrize("in_hw,out_hw", [((1024, 1024), (256, 256)), ((300, 260), (112, 112)),
                                          ((7, 5), (14, 10)), ((9, 9), (9, 9))])
def test_nearest_matches_torch_rule(in_hw, out_hw):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, *in_hw, 1)).astype(np.float32)
  out = np.asarray(resize.resize_nearest(jnp.asarray(x), out_hw))
  idx = [np.minimum(np.floor(np.arange(o, dtype=np.float32) * (np.float32(i) / np.float32(o))
                             ).astype(int), i - 1) for i, o in zip(in_hw, out_hw)]
  np.testing.assert_array_equal(out, x[:, idx[0]][:, :, idx[1]])
  if in_hw == (1024, 1024):
    np.testing.assert_array_equal(out, x[:, ::4, ::4])
  if out_hw == (2 * in_hw[0], 2 * in_hw[1]):
    np.testing.assert_array_equal(out, x.repeat(2, 1).repeat(2, 2))


@pytest.mark.parametrize("in_hw,out_hw", [((9, 9), (9, 9)), ((7, 5), (16, 11)),
                                          ((300, 260), (112, 112)), ((1024, 768), (160, 224))])
def test_bilinear_matches_numpy_emulation(in_hw, out_hw):
  rng = np.random.default_rng(4)
  x = rng.uniform(-1, 1, (1, *in_hw, 2)).astype(np.float32)
  out = np.asarray(jax.jit(resize.resize_bilinear, static_argnums=1)(x, out_hw))
  assert np.abs(out - torch_bilinear_reference(x, out_hw)).max() < 2e-7
  if in_hw == out_hw:
    np.testing.assert_array_equal(out, x)
