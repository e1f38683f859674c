"""torchvision `RandomPerspective` for stage 2 (REFERENCE.md section 4 step 2), in JAX.

The official code augments the generated image with
`RandomPerspective(distortion_scale=0.5, p=1, fill=0)` (bilinear) before the CLIP loss.
This module follows torchvision's tensor path step by step:
  1. `perspective_corners` = `RandomPerspective.get_params`: integer corner offsets drawn
     uniformly, as `torch.randint` does (inclusive low, exclusive high).
  2. `perspective_coefficients` = `F._get_perspective_coeffs`: the 8 homography
     coefficients mapping OUTPUT pixel coordinates (endpoints) to INPUT ones (startpoints).
  3. `perspective_source_coords` = `_perspective_grid` followed by grid_sample's
     unnormalisation (align_corners=False): pixel centres (+0.5) through the homography.
  4. `sample_bilinear_zeros` = `grid_sample(mode='bilinear', padding_mode='zeros')`.
  5. `warp_perspective` = `_apply_grid_transform` with a fill: a ones channel is appended,
     warped with the image, and the result is `img * mask + (1 - mask) * fill`. For fill=0
     this is `img * mask`, i.e. the border band is attenuated twice (once by the zero
     padding of grid_sample, once by the mask), exactly as torchvision does.

Differences from torchvision, all deliberate:
  - RNG: draws come from JAX's PRNG (explicit key), so they differ from torch's stream; the
    distribution (integer grid, bounds) is the same.
  - Batches: torchvision applied to an [N, C, H, W] tensor uses ONE draw for the whole batch;
    `random_perspective` draws independently per image (the official code uses N = 1).
  - Coefficients: torchvision solves the 8x8 system in float64 and casts to float32; JAX runs
    in float32 by default, so we build the same homography in closed form in float32 and
    refine it once with an error-free residual (see `perspective_coefficients`): within ~1
    float32 ulp of the exact solution (torchvision's: 0.5 ulp), mostly bit-identical.
  - Sampling positions are computed directly in pixel units rather than through the [-1, 1]
    grid and back (algebraically identical; avoids that round trip's float32 rounding).
  - Only bilinear interpolation (what the official code uses).
Parity (tests/test_augment.py, torch reference built from torchvision's algorithm):
coefficients bit-identical to torchvision's in the tested cases; warped random images within
2e-6 at power-of-two sizes (1024 in production) and 2e-5 at odd sizes, where torchvision's
own float32 grid round trip moves sampling positions by ~1e-6 x size px.
Images are NHWC (or HWC for single-image functions), float, typically in [0, 1]; outputs stay
in the convex hull of the input values and the fill. Everything is jittable (the image size,
distortion_scale and fill are static) and differentiable w.r.t. the image.
"""
from __future__ import annotations

from typing import Sequence, Union

import jax
import jax.numpy as jnp

Fill = Union[None, float, Sequence[float]]


def _corner_bounds(height: int, width: int, distortion_scale: float):
  """torchvision's randint bounds: (low, high) lists [4][2], high exclusive (x, y order)."""
  if not 0.0 <= distortion_scale <= 1.0:
    raise ValueError(f"distortion_scale must be in [0, 1], got {distortion_scale}")
  bw = int(distortion_scale * (width // 2)) + 1
  bh = int(distortion_scale * (height // 2)) + 1
  low = [[0, 0], [width - bw, 0], [width - bw, height - bh], [0, height - bh]]
  high = [[bw, bh], [width, bh], [width, height], [bw, height]]
  return low, high


def perspective_corners(key: jax.Array, height: int, width: int,
                        distortion_scale: float = 0.5):
  """Random corners as `RandomPerspective.get_params(width, height, distortion_scale)`.

  Returns (startpoints, endpoints), each int32 [4, 2] of (x, y) pixel coordinates in the
  order top-left, top-right, bottom-right, bottom-left. startpoints are the image corners
  (0, 0), (W-1, 0), (W-1, H-1), (0, H-1). With bw = int(s * (W // 2)) + 1 and
  bh = int(s * (H // 2)) + 1, each endpoint coordinate is uniform on the integers of
  [0, bw) (left x), [W - bw, W) (right x), [0, bh) (top y), [H - bh, H) (bottom y).
  height, width and distortion_scale are static Python numbers.
  """
  low, high = _corner_bounds(int(height), int(width), float(distortion_scale))
  start = jnp.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]],
                    jnp.int32)
  end = jax.random.randint(key, (4, 2), jnp.array(low, jnp.int32),
                           jnp.array(high, jnp.int32), dtype=jnp.int32)
  return start, end


def _cross(p: jax.Array, q: jax.Array) -> jax.Array:
  """Cross product of homogeneous points (px, py, 1) x (qx, qy, 1) -> [3]."""
  return jnp.stack([p[1] - q[1], q[0] - p[0], p[0] * q[1] - q[0] * p[1]])


def _det3(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
  """det[a b c] of homogeneous points = twice the signed area of the triangle (a, b, c)."""
  return (b[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (b[1] - a[1])


def _projective_basis(points: jax.Array):
  """For 4 points [4, 2]: rows of adj(M), M = [p0 p1 p2] (homogeneous columns), and
  lam [3] with M diag(lam) [1, 1, 1]^T = p3 up to the common factor det(M)."""
  p0, p1, p2, p3 = points
  adj = jnp.stack([_cross(p1, p2), _cross(p2, p0), _cross(p0, p1)])
  lam = jnp.stack([_det3(p3, p1, p2), _det3(p0, p3, p2), _det3(p0, p1, p3)])
  return adj, lam


def _closed_form_coefficients(start: jax.Array, end: jax.Array) -> jax.Array:
  """Homography end -> start in closed form, float32 [8] (points float32 [4, 2]).

  With A_p = [p0 p1 p2] diag(lam_p) the map of the projective basis (e1, e2, e3, 1) onto
  the points p, H = A_start A_end^-1 = sum_i (mu_i / lam_i) s_i adj_i (up to scale). For
  integer points below 2^11 adj and the areas lam, mu are exact in float32, so each
  coefficient carries only a few roundings (no 8x8 float32 solve, whose error grows with
  the system's condition number). Identity corners give the exact identity.
  """
  adj_end, lam_end = _projective_basis(end)
  _, lam_start = _projective_basis(start)
  start_h = jnp.concatenate([start[:3], jnp.ones((3, 1), jnp.float32)], axis=1)
  hom = jnp.einsum("i,ia,ib->ab", lam_start / lam_end, start_h, adj_end)
  return (hom / hom[2, 2]).reshape(9)[:8]


def _split_float(a: jax.Array):
  """float32 a == hi + lo exactly, each with at most 12 significant bits."""
  bits = jax.lax.bitcast_convert_type(a, jnp.uint32) & jnp.uint32(0xFFFFF000)
  hi = jax.lax.bitcast_convert_type(bits, jnp.float32)
  return hi, a - hi


def _exact_product_terms(coef: jax.Array, n: jax.Array):
  """float32 coef times int32 n (|n| < 2^22) as 4 float32 terms, each exact, summing to it."""
  n1 = jnp.right_shift(n, 11)
  n0 = (n - jnp.left_shift(n1, 11)).astype(jnp.float32)
  n1 = n1.astype(jnp.float32) * 2048.0
  hi, lo = _split_float(coef)
  return [hi * n1, hi * n0, lo * n1, lo * n0]


def _accurate_sum(terms):
  """Sum of float32 terms with error-free transformations (TwoSum): about one rounding of
  the exact sum, whatever the cancellation (add/sub only, so FMA contraction is harmless)."""
  total, comp = terms[0], jnp.zeros_like(terms[0])
  for t in terms[1:]:
    new = total + t
    back = new - total
    comp = comp + ((total - (new - back)) + (t - back))
    total = new
  return total + comp


def _system(start: jax.Array, end: jax.Array) -> jax.Array:
  """torchvision's 8x8 matrix: rows [x, y, 1, 0, 0, 0, -u x, -u y] and
  [0, 0, 0, x, y, 1, -v x, -v y] for end (x, y) -> start (u, v), float32."""
  x, y, u, v = end[:, 0], end[:, 1], start[:, 0], start[:, 1]
  one, zero = jnp.ones_like(x), jnp.zeros_like(x)
  rows_u = jnp.stack([x, y, one, zero, zero, zero, -u * x, -u * y], axis=-1)
  rows_v = jnp.stack([zero, zero, zero, x, y, one, -v * x, -v * y], axis=-1)
  return jnp.stack([rows_u, rows_v], axis=1).reshape(8, 8)


def _residual(coeffs: jax.Array, start: jax.Array, end: jax.Array) -> jax.Array:
  """b - A coeffs of torchvision's system for int32 points (|coord| < 2^11), to about one
  rounding of the exact value (every product split into exact float32 terms). -> [8]."""
  u = start.T                                            # [2, 4]: targets u (row 0), v (row 1)
  x = jnp.broadcast_to(end[:, 0], u.shape)
  y = jnp.broadcast_to(end[:, 1], u.shape)
  ca, cb, cc = (coeffs[jnp.array([i, i + 3])][:, None] * jnp.ones(u.shape, jnp.float32)
                for i in range(3))
  g, h = (jnp.full(u.shape, coeffs[i]) for i in (6, 7))
  terms = [u.astype(jnp.float32), -cc]
  terms += [-t for t in _exact_product_terms(ca, x)]
  terms += [-t for t in _exact_product_terms(cb, y)]
  terms += _exact_product_terms(g, u * x)
  terms += _exact_product_terms(h, u * y)
  return _accurate_sum(terms).T.reshape(8)              # rows interleaved as in `_system`


def _refine(coeffs: jax.Array, start: jax.Array, end: jax.Array) -> jax.Array:
  """One step of iterative refinement with an (almost) exact residual: the correction is
  tiny, so a float32 solve of the equilibrated system suffices, and the result is within
  about one float32 ulp of the exact solution (torchvision: float64 solve cast to float32)."""
  a = _system(start.astype(jnp.float32), end.astype(jnp.float32))
  col = jnp.exp2(-jnp.round(jnp.log2(jnp.maximum(jnp.max(jnp.abs(a), axis=0), 1e-30))))
  a = a * col[None, :]
  row = jnp.exp2(-jnp.round(jnp.log2(jnp.maximum(jnp.max(jnp.abs(a), axis=1), 1e-30))))
  delta = col * jnp.linalg.solve(a * row[:, None], row * _residual(coeffs, start, end))
  return coeffs + delta


def perspective_coefficients(startpoints: jax.Array, endpoints: jax.Array) -> jax.Array:
  """`F._get_perspective_coeffs`: (a, b, c, d, e, f, g, h), float32 [8].

  startpoints, endpoints [4, 2] (x, y). The coefficients map an OUTPUT coordinate (x, y)
  (endpoint frame) to the INPUT coordinate ((a x + b y + c) / (g x + h y + 1),
  (d x + e y + f) / (g x + h y + 1)) (startpoint frame), as torchvision's. torchvision
  solves the 8x8 system in float64 and casts to float32; we take the closed form in float32
  and, for integer points (torchvision's type; |coord| < 2^11, i.e. images up to 2048 px),
  refine it once with an error-free residual: within ~1 float32 ulp of the exact solution.
  """
  start, end = jnp.asarray(startpoints), jnp.asarray(endpoints)
  coeffs = _closed_form_coefficients(start.astype(jnp.float32), end.astype(jnp.float32))
  if jnp.issubdtype(start.dtype, jnp.integer) and jnp.issubdtype(end.dtype, jnp.integer):
    coeffs = _refine(coeffs, start.astype(jnp.int32), end.astype(jnp.int32))
  return coeffs


def perspective_source_coords(coeffs: jax.Array, height: int, width: int) -> jax.Array:
  """Where torchvision's `_perspective_grid` + `grid_sample(align_corners=False)` read from:
  [H, W, 2] float32 (x, y) source positions in pixel-index units (pixel k has centre k).

  Output pixel (i, j) has centre (j + 0.5, i + 0.5); torchvision maps it by the homography,
  divides by (W/2, H/2) and subtracts 1 (the grid), and grid_sample maps the grid back by
  (g + 1) * size / 2 - 0.5. We evaluate the same position directly, homography(centre) - 0.5,
  which skips that round trip's rounding (identity corners give exactly the identity;
  torchvision's own identity warp is off by up to ~1e-5).
  """
  c = jnp.asarray(coeffs, jnp.float32)
  xs = jnp.arange(width, dtype=jnp.float32)[None, :] + 0.5
  ys = jnp.arange(height, dtype=jnp.float32)[:, None] + 0.5
  den = xs * c[6] + ys * c[7] + 1.0
  src_x = (xs * c[0] + ys * c[1] + c[2]) / den
  src_y = (xs * c[3] + ys * c[4] + c[5]) / den
  return jnp.stack([src_x - 0.5, src_y - 0.5], axis=-1)


def sample_bilinear_zeros(image: jax.Array, coords: jax.Array) -> jax.Array:
  """grid_sample's bilinear kernel with padding_mode='zeros' on one image.

  image [H, W, C] float; coords [Ho, Wo, 2] (x, y) in pixel-index units (see
  `perspective_source_coords`) -> [Ho, Wo, C]. Each of the 4 taps outside the image reads 0.
  Differentiable w.r.t. the image (and the coordinates, almost everywhere).
  """
  h, w, ch = image.shape
  ix = coords[..., 0].astype(image.dtype)
  iy = coords[..., 1].astype(image.dtype)
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  wx, wy = ix - x0, iy - y0            # distances to the west / north taps
  ex, sy = 1.0 - wx, 1.0 - wy          # distances to the east / south taps
  flat = image.reshape(h * w, ch)

  def tap(xf, yf):
    valid = (xf >= 0) & (xf <= w - 1) & (yf >= 0) & (yf <= h - 1)
    xi = jnp.clip(jnp.nan_to_num(xf), 0, w - 1).astype(jnp.int32)
    yi = jnp.clip(jnp.nan_to_num(yf), 0, h - 1).astype(jnp.int32)
    return jnp.where(valid[..., None], jnp.take(flat, yi * w + xi, axis=0), 0.0)

  return (tap(x0, y0) * (sy * ex)[..., None] + tap(x0 + 1, y0) * (sy * wx)[..., None] +
          tap(x0, y0 + 1) * (wy * ex)[..., None] + tap(x0 + 1, y0 + 1) * (wy * wx)[..., None])


def warp_perspective(image: jax.Array, coeffs: jax.Array, fill: Fill = 0.0) -> jax.Array:
  """`F.perspective` on a tensor (bilinear): image [H, W, C] float -> [H, W, C].

  coeffs [8] from `perspective_coefficients` (output -> input mapping). fill: None gives
  plain zero-padded grid_sample; a number or per-channel sequence (RandomPerspective always
  passes one) appends a ones channel and returns `img * mask + (1 - mask) * fill`.
  """
  h, w, ch = image.shape
  coords = perspective_source_coords(coeffs, h, w)
  if fill is None:
    return sample_bilinear_zeros(image, coords)
  stacked = jnp.concatenate([image, jnp.ones((h, w, 1), image.dtype)], axis=-1)
  sampled = sample_bilinear_zeros(stacked, coords)
  img, mask = sampled[..., :ch], sampled[..., ch:]
  fill_img = jnp.broadcast_to(jnp.asarray(fill, image.dtype).reshape(-1), (ch,))
  return img * mask + (1.0 - mask) * fill_img


def random_perspective_image(key: jax.Array, image: jax.Array, distortion_scale: float = 0.5,
                             p: float = 1.0, fill: Fill = 0.0) -> jax.Array:
  """One image [H, W, C]: with probability p (uniform draw < p, as `torch.rand(1) < p`),
  warp it with corners from `perspective_corners`; otherwise return it unchanged."""
  h, w, _ = image.shape
  k_apply, k_corners = jax.random.split(key)
  start, end = perspective_corners(k_corners, h, w, distortion_scale)
  warped = warp_perspective(image, perspective_coefficients(start, end), fill)
  return jnp.where(jax.random.uniform(k_apply) < p, warped, image)


def random_perspective(key: jax.Array, images: jax.Array, distortion_scale: float = 0.5,
                       p: float = 1.0, fill: Fill = 0.0) -> jax.Array:
  """`RandomPerspective(distortion_scale, p, bilinear, fill)` on a batch [N, H, W, C].

  Image n uses `random_perspective_image(jax.random.split(key, N)[n], images[n], ...)`:
  independent corners and coin flip per image. Static shapes; jittable with
  distortion_scale and fill static (p may be traced).
  """
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda k, im: random_perspective_image(k, im, distortion_scale, p, fill))(
      keys, images)
