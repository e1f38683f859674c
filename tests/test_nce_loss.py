"""CLIP makeup losses: golden parity of the official InfoNCE loss (synthetic and end-to-end
through the recipe CLIP, float32 and float64), properties of the pure loss functions, and
the stage-1 LPIPS + MSE loss against the LPIPS golden."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip2protect_jax import losses_clip as L
from clip2protect_jax import parity
from clip2protect_jax.convert.lpips import convert_lpips_state_dict
from clip2protect_jax.models.lpips import LPIPS
from clip2protect_jax.parity.recipe import load_arrays, load_manifest, recipe_v1_state_dict

GOLDEN = "tests/golden"


@pytest.fixture(scope="module")
def manifest():
  return load_manifest(GOLDEN)


@pytest.fixture(scope="module")
def g():
  return load_arrays(GOLDEN, "nce_loss.npz")


@pytest.fixture(scope="module")
def synthetic(g):
  ts = L.l2_normalize(jnp.asarray(g["text_src_raw"]))
  tt = L.l2_normalize(jnp.asarray(g["text_tgt_raw"]))
  return jnp.asarray(g["img_x0_raw"]), jnp.asarray(g["img_aug_raw_b2"]), ts, tt


def test_golden_parity(manifest):
  results = parity.run_item("nce_loss", GOLDEN, manifest)
  assert all(r.ok for r in results), "\n".join(r.line() for r in results)
  names = {r.output for r in results}
  assert {"loss", "loss_b2", "e2e_loss", "e2e_img_x0_raw", "e2e_text_tgt_raw"} <= names


def test_golden_parity_float64(manifest):
  with jax.enable_x64(True):
    results = parity.run_item("nce_loss", GOLDEN, manifest, float64=True)
  assert all(r.ok for r in results), "\n".join(r.line() for r in results)
  assert max(r.scaled for r in results) < 1e-12


def test_loss_ignores_feature_scale_and_is_mean_of_rows(synthetic):
  x0, xa, ts, tt = synthetic
  base = L.nce_loss(x0, xa, ts, tt)
  np.testing.assert_allclose(L.nce_loss(3.0 * x0, 0.5 * xa, ts, tt), base, rtol=1e-6)
  rows = L.nce_terms(x0, xa, ts, tt, reduction="none").loss
  assert rows.shape == (4,)
  np.testing.assert_allclose(jnp.mean(rows), base, rtol=1e-6)
  # Rows 0..B-1 pair the query with pos1 = the text direction, rows B.. with pos2.
  terms = L.nce_terms(x0, xa, ts, tt)
  np.testing.assert_allclose(terms.positive[0], L.text_direction(ts, tt)[0], atol=1e-6)


def test_loss_falls_when_image_moves_along_the_text_direction(synthetic):
  x0, _, ts, tt = synthetic
  e0 = L.l2_normalize(x0)
  toward = e0 + 0.3 * L.text_direction(ts, tt)
  away = e0 - 0.3 * L.text_direction(ts, tt)
  assert float(L.nce_loss(x0, toward, ts, tt)) < float(L.nce_loss(x0, away, ts, tt))
  np.testing.assert_allclose(L.directional_clip_loss(x0, toward, ts, tt), 0.0, atol=2e-2)
  np.testing.assert_allclose(L.directional_clip_loss(x0, away, ts, tt), 2.0, atol=2e-2)


def test_gradient_matches_finite_differences(synthetic):
  x0, xa, ts, tt = synthetic
  with jax.enable_x64(True):
    x0, xa, ts, tt = (jnp.asarray(np.asarray(a), jnp.float64) for a in (x0, xa, ts, tt))
    f = lambda x: L.nce_loss(x0, x, ts, tt)
    grad = jax.grad(f)(xa)
    direction = jnp.asarray(np.random.default_rng(0).standard_normal(xa.shape))
    eps = 1e-6
    fd = (f(xa + eps * direction) - f(xa - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.sum(grad * direction), fd, rtol=1e-6)
    assert float(jnp.abs(grad).max()) > 0


def test_info_nce_against_explicit_cross_entropy():
  rng = np.random.default_rng(3)
  q, p, n = (jnp.asarray(rng.standard_normal(s)) for s in ((3, 8), (3, 8), (5, 8)))
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  qn, pn, nn_ = unit(np.asarray(q)), unit(np.asarray(p)), unit(np.asarray(n))
  logits = np.concatenate([(qn * pn).sum(1, keepdims=True), qn @ nn_.T], 1) / 0.1
  want = np.log(np.exp(logits).sum(1)) - logits[:, 0]
  np.testing.assert_allclose(L.info_nce(q, p, n, reduction="none"), want, rtol=1e-5)
  with pytest.raises(ValueError, match="reduction"):
    L.info_nce(q, p, n, reduction="sum")


def test_lpips_mse_loss_on_the_lpips_golden(manifest):
  """At size 64 the nearest resize of the 64x64 golden inputs is the identity, so the
  stage-1 loss must be the golden LPIPS plus 0.1 * MSE."""
  gl = load_arrays(GOLDEN, "lpips_vgg.npz")
  params = convert_lpips_state_dict(recipe_v1_state_dict(manifest["models"]["lpips_vgg"]))
  a, b = (np.transpose(gl[k], (0, 2, 3, 1)) for k in ("in0", "in1"))
  loss = jax.jit(lambda p, x, y, size: L.lpips_mse_loss(LPIPS(), p, x, y, size=size),
                 static_argnums=3)
  got = loss(params, a, b, 64)
  mse = ((a.astype(np.float64) - b) ** 2).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(got, gl["out"].reshape(-1) + 0.1 * mse, rtol=1e-5)
  # 2x nearest downsampling keeps pixels [::2, ::2] (torch's legacy nearest).
  got32 = loss(params, a, b, 32)
  want32 = loss(params, a[:, ::2, ::2], b[:, ::2, ::2], 32)
  np.testing.assert_allclose(got32, want32, rtol=1e-6)
