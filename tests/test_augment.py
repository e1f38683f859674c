"""RandomPerspective (clip2protect_jax.augment) against torchvision's algorithm, rebuilt here
with torch ops (torchvision itself is not installed): `_get_perspective_coeffs` (float64
lstsq, cast to float32), `_perspective_grid`, `grid_sample` and the fill-mask blend of
`_apply_grid_transform`."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip2protect_jax import augment

H, W = 37, 53  # odd sizes: exercises H // 2, W // 2 and inexact divisions by W / 2


def _rect(h, w):
  return [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]


# (h, w, endpoints [top-left, top-right, bottom-right, bottom-left]); all within
# torchvision's bounds for distortion_scale 0.5 ("mild", "s05_extremes") or 1.0.
POINT_SETS = {
    "mild": (H, W, [[2, 1], [50, 3], [51, 35], [1, 34]]),
    "s05_extremes": (H, W, [[13, 9], [39, 0], [52, 27], [0, 36]]),
    "strong": (H, W, [[26, 18], [27, 0], [52, 18], [0, 36]]),        # reflex top-left
    "keystone": (H, W, [[20, 0], [32, 0], [52, 36], [0, 36]]),
    "mild_64": (64, 64, [[2, 1], [61, 3], [62, 60], [1, 59]]),
    "s05_extremes_64": (64, 64, [[16, 16], [47, 0], [63, 47], [0, 63]]),
    "strong_64": (64, 64, [[32, 32], [31, 0], [63, 32], [0, 63]]),
    "keystone_64": (64, 64, [[24, 0], [39, 0], [63, 63], [0, 63]]),
}


# Max abs difference allowed against the torch reference on random [0, 1] images (a wrong
# pixel convention moves values by ~0.1). A random image turns a sampling-position error
# into the same value error (amplified near the vanishing line of strong distortions).
# Torch's float32 round trip through the normalised grid moves positions by up to ~1e-6 x
# size px where W / 2 is not a power of two; with power-of-two sizes only the last bits
# differ (XLA vs torch op order and FMA use, which depend on the CPU: max 1e-5 on the
# machines of 2026-11, 2.1e-5 at 64 px on an AVX-512 FP16/AMX Xeon).
TOLERANCE = 5e-5


# ----------------------------------------------------------------------------- torch reference
def torch_coeffs(startpoints, endpoints):
  """torchvision `_get_perspective_coeffs`: float64 least squares, cast to float32."""
  torch = pytest.importorskip("torch")
  a = torch.zeros(8, 8, dtype=torch.float64)
  for i, (p1, p2) in enumerate(zip(endpoints, startpoints)):
    a[2 * i, :] = torch.tensor([p1[0], p1[1], 1, 0, 0, 0, -p2[0] * p1[0], -p2[0] * p1[1]])
    a[2 * i + 1, :] = torch.tensor([0, 0, 0, p1[0], p1[1], 1, -p2[1] * p1[0], -p2[1] * p1[1]])
  b = torch.tensor(startpoints, dtype=torch.float64).view(8)
  res = torch.linalg.lstsq(a, b, driver="gels").solution
  return res.to(torch.float32).tolist(), res.tolist()


def torch_perspective(image_hwc, coeffs, fill):
  """torchvision `F_t.perspective` (bilinear): `_perspective_grid` + `_apply_grid_transform`."""
  torch = pytest.importorskip("torch")
  img = torch.from_numpy(np.ascontiguousarray(image_hwc)).permute(2, 0, 1)[None]
  _, ch, oh, ow = img.shape
  dt = torch.float32
  theta1 = torch.tensor([[[coeffs[0], coeffs[1], coeffs[2]], [coeffs[3], coeffs[4], coeffs[5]]]],
                        dtype=dt)
  theta2 = torch.tensor([[[coeffs[6], coeffs[7], 1.0], [coeffs[6], coeffs[7], 1.0]]], dtype=dt)
  base = torch.empty(1, oh, ow, 3, dtype=dt)
  base[..., 0].copy_(torch.linspace(0.5, ow * 1.0 + 0.5 - 1.0, steps=ow))
  base[..., 1].copy_(torch.linspace(0.5, oh * 1.0 + 0.5 - 1.0, steps=oh).unsqueeze_(-1))
  base[..., 2].fill_(1)
  rescaled = theta1.transpose(1, 2) / torch.tensor([0.5 * ow, 0.5 * oh], dtype=dt)
  grid1 = base.view(1, oh * ow, 3).bmm(rescaled)
  grid2 = base.view(1, oh * ow, 3).bmm(theta2.transpose(1, 2))
  grid = (grid1 / grid2 - 1.0).view(1, oh, ow, 2)
  if fill is not None:
    img = torch.cat((img, torch.ones((1, 1, oh, ow), dtype=dt)), dim=1)
  out = torch.nn.functional.grid_sample(img, grid, mode="bilinear", padding_mode="zeros",
                                        align_corners=False)
  if fill is not None:
    mask = out[:, -1:].expand(1, ch, oh, ow)
    out = out[:, :-1]
    fill_list = list(fill) if isinstance(fill, (tuple, list)) else [float(fill)] * ch
    fill_img = torch.tensor(fill_list, dtype=dt).view(1, -1, 1, 1).expand_as(out)
    out = out * mask + (1.0 - mask) * fill_img
  return out[0].permute(1, 2, 0).numpy()


def _random_image(seed, h=H, w=W, c=3):
  return np.random.default_rng(seed).random((h, w, c), dtype=np.float32)


_coeffs = jax.jit(augment.perspective_coefficients)
_warp = jax.jit(augment.warp_perspective, static_argnames="fill")
_corners = jax.jit(jax.vmap(augment.perspective_corners, in_axes=(0, None, None, None)),
                   static_argnums=(1, 2, 3))


# ----------------------------------------------------------------------------- torch parity
@pytest.mark.parametrize("name", sorted(POINT_SETS))
def test_coefficients_match_torch_lstsq(name):
  """Same homography as torchvision's float64 solve: every coefficient within 1 float32 ulp
  of the float64 solution (torchvision's float32 cast: 0.5 ulp); coefficients that vanish
  (keystone: d, f, g) negligible, i.e. < 1e-9 px once multiplied by the coordinates."""
  h, w, end = POINT_SETS[name]
  start = _rect(h, w)
  _, ref64 = torch_coeffs(start, end)
  ref64 = np.asarray(ref64)
  ours = np.asarray(_coeffs(jnp.array(start), jnp.array(end)), np.float64)
  scale = np.array([w, h, 1, w, h, 1, w * w, h * w], np.float64)  # size of each term, in px
  big = np.abs(ref64) * scale > 1e-6
  ulp = np.spacing(np.abs(ref64).astype(np.float32)).astype(np.float64)
  assert np.all(np.abs(ours - ref64)[big] <= ulp[big]), (ours - ref64) / ulp
  assert np.all(np.abs(ours - ref64)[~big] * scale[~big] < 1e-9)


def test_coefficients_float_points_and_random_draws():
  """Float (non-integer) points skip the refinement and still solve the system closely; over
  random draws at 1024 px the refined coefficients stay within 1 ulp of float64."""
  start = np.array(_rect(H, W), np.float64)
  end = np.array(POINT_SETS["mild"][2], np.float64) + 0.25
  _, ref64 = torch_coeffs(start.tolist(), end.tolist())
  ours = np.asarray(_coeffs(jnp.asarray(start, jnp.float32), jnp.asarray(end, jnp.float32)))
  np.testing.assert_allclose(ours, ref64, rtol=1e-5, atol=1e-7)

  rng = np.random.default_rng(5)
  low, high = augment._corner_bounds(1024, 1024, 0.5)
  for _ in range(20):
    s = np.array(_rect(1024, 1024), np.int32)
    e = rng.integers(low, high).astype(np.int32)
    c = np.asarray(_coeffs(jnp.asarray(s), jnp.asarray(e)))
    _, r = torch_coeffs(s.tolist(), e.tolist())
    r = np.asarray(r)
    big = np.abs(r) > 1e-12
    ulp = np.spacing(np.abs(r).astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(c.astype(np.float64) - r)[big] <= ulp[big])


@pytest.mark.parametrize("name", sorted(POINT_SETS))
def test_warp_matches_torch_with_torch_coefficients(name):
  """The warp itself (grid, grid_sample, fill-mask blend) given torchvision's coefficients."""
  h, w, end = POINT_SETS[name]
  coeffs32, _ = torch_coeffs(_rect(h, w), end)
  for seed in range(2):
    img = _random_image(seed, h, w)
    ref = torch_perspective(img, coeffs32, fill=0.0)
    ours = np.asarray(_warp(jnp.asarray(img), jnp.asarray(coeffs32), fill=0.0))
    assert np.max(np.abs(ours - ref)) <= TOLERANCE


@pytest.mark.parametrize("name", sorted(POINT_SETS))
def test_end_to_end_matches_torch(name):
  """Our coefficients + our warp vs torchvision's algorithm, fill=0 (RandomPerspective's)."""
  h, w, end = POINT_SETS[name]
  start = _rect(h, w)
  coeffs32, _ = torch_coeffs(start, end)
  ours_c = _coeffs(jnp.array(start), jnp.array(end))
  for seed in range(2):
    img = _random_image(10 + seed, h, w)
    ref = torch_perspective(img, coeffs32, fill=0.0)
    ours = np.asarray(_warp(jnp.asarray(img), ours_c, fill=0.0))
    assert np.max(np.abs(ours - ref)) <= TOLERANCE


def test_fill_variants_match_torch():
  """fill=None (plain grid_sample) and a per-channel non-zero fill."""
  h, w, end = POINT_SETS["strong"]
  coeffs32, _ = torch_coeffs(_rect(h, w), end)
  img = _random_image(3, h, w)
  for fill in (None, (0.2, 0.5, 0.9)):
    ref = torch_perspective(img, coeffs32, fill=fill)
    ours = np.asarray(_warp(jnp.asarray(img), jnp.asarray(coeffs32), fill=fill))
    assert np.max(np.abs(ours - ref)) <= TOLERANCE
  # fill=0 darkens the border band twice (zero padding, then the mask): not plain grid_sample.
  plain = np.asarray(_warp(jnp.asarray(img), jnp.asarray(coeffs32), fill=None))
  masked = np.asarray(_warp(jnp.asarray(img), jnp.asarray(coeffs32), fill=0.0))
  assert np.max(np.abs(plain - masked)) > 1e-3


def test_identity_corners_give_identity_image():
  start = jnp.array(_rect(H, W))
  coeffs = _coeffs(start, start)
  np.testing.assert_array_equal(np.asarray(coeffs), [1, 0, 0, 0, 1, 0, 0, 0])
  img = _random_image(4)
  for fill in (0.0, None):
    out = np.asarray(_warp(jnp.asarray(img), coeffs, fill=fill))
    assert np.max(np.abs(out - img)) <= 1e-6


# ----------------------------------------------------------------------------- random draws
@pytest.mark.parametrize("h,w,scale", [(H, W, 0.5), (64, 48, 1.0)])
def test_corner_distribution(h, w, scale):
  """Integers on torchvision's grid: each coordinate uniform over the full bounds."""
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)
  start, end = _corners(keys, h, w, scale)
  start, end = np.asarray(start), np.asarray(end)
  assert end.dtype == np.int32 and end.shape == (4000, 4, 2)
  np.testing.assert_array_equal(start, np.broadcast_to(_rect(h, w), start.shape))
  bw, bh = int(scale * (w // 2)) + 1, int(scale * (h // 2)) + 1
  lows = [[0, 0], [w - bw, 0], [w - bw, h - bh], [0, h - bh]]
  highs = [[bw, bh], [w, bh], [w, h], [bw, h]]   # exclusive, as torch.randint
  for c in range(4):
    for d in range(2):
      vals = end[:, c, d]
      assert set(np.unique(vals)) == set(range(lows[c][d], highs[c][d]))
      counts = np.bincount(vals - lows[c][d])
      expected = len(vals) / len(counts)
      assert counts.min() > 0.6 * expected and counts.max() < 1.4 * expected


def test_zero_distortion_and_validation():
  low, high = augment._corner_bounds(20, 30, 0.0)
  np.testing.assert_array_equal(np.array(high) - 1, low)   # a single value: the corners
  np.testing.assert_array_equal(low, _rect(20, 30))
  with pytest.raises(ValueError):
    augment.perspective_corners(jax.random.PRNGKey(0), 10, 10, 1.5)


# One jitted batched transform shared by the tests below (same shapes and argument types
# everywhere, so it must be traced exactly once).
_COUNT = {"traces": 0}
_BATCH = (4, 32, 40, 3)


def _counted(key, images, p):
  _COUNT["traces"] += 1
  return augment.random_perspective(key, images, distortion_scale=0.5, p=p, fill=0.0)


_random_jit = jax.jit(_counted)


def _batch(seed=20):
  return jnp.asarray(np.stack([_random_image(seed + i, *_BATCH[1:]) for i in range(_BATCH[0])]))


def test_keys_batching_and_single_compilation():
  images = _batch()
  key = jax.random.PRNGKey(7)
  out = _random_jit(key, images, 1.0)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(_random_jit(key, images, 1.0)))
  assert not np.allclose(np.asarray(out),
                         np.asarray(_random_jit(jax.random.PRNGKey(8), images, 1.0)))
  for k in range(5):
    _random_jit(jax.random.PRNGKey(100 + k), images, 1.0)
  assert _COUNT["traces"] == 1

  # batched == per image with the split keys; draws differ between images
  keys = jax.random.split(key, images.shape[0])
  single = jax.jit(augment.random_perspective_image)
  for n in range(images.shape[0]):
    # same draw; only float32 rounding differs between the two compiled programs
    np.testing.assert_allclose(np.asarray(out[n]), np.asarray(single(keys[n], images[n])),
                               atol=5e-5)
  outs = np.asarray(_random_jit(key, jnp.broadcast_to(images[:1], images.shape), 1.0))
  assert all(not np.allclose(outs[0], outs[n]) for n in range(1, outs.shape[0]))
  assert _COUNT["traces"] == 1


def test_probability_p():
  """p = 0: unchanged; p = 0.5: about half of 64 (key, image) draws unchanged; p traced."""
  images = _batch()
  key = jax.random.PRNGKey(1)
  np.testing.assert_array_equal(np.asarray(_random_jit(key, images, 0.0)), np.asarray(images))
  unchanged = 0
  for k in range(16):
    out = np.asarray(_random_jit(jax.random.PRNGKey(200 + k), images, 0.5))
    unchanged += int(np.all(out == np.asarray(images), axis=(1, 2, 3)).sum())
  assert 16 <= unchanged <= 48
  assert _COUNT["traces"] <= 1


def test_gradient_wrt_image():
  images = _batch(60)
  weights = jnp.asarray(np.random.default_rng(0).random(_BATCH, dtype=np.float32))
  key = jax.random.PRNGKey(3)

  def loss(x):
    return jnp.sum(augment.random_perspective(key, x, 0.5, 1.0, 0.0) * weights)

  grad = np.asarray(jax.jit(jax.grad(loss))(images))
  assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0
  # the warp is linear in the image: <grad, v> == loss(v) for any v
  v = _batch(80)
  loss_v = float(jnp.sum(_random_jit(key, v, 1.0) * weights))
  np.testing.assert_allclose(float(jnp.sum(grad * v)), loss_v, rtol=1e-4)
