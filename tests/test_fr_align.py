"""fr_align: the differentiable warp, the landmark transforms, and dlib's chip geometry."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip2protect_jax import align, fr_align, image_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASTRONAUT = os.path.join(ROOT, "assets", "photos", "sources", "astronaut.png")


def test_warp_identity_translation_and_zero_outside():
  img = jax.random.uniform(jax.random.key(0), (1, 9, 11, 3))
  eye = np.array([[[1.0, 0, 0], [0, 1.0, 0]]], np.float32)
  np.testing.assert_allclose(fr_align.warp_affine(img, eye, (9, 11)), img, atol=1e-6)
  shift = np.array([[[1.0, 0, 2.0], [0, 1.0, 1.0]]], np.float32)  # out (u, v) <- in (u+2, v+1)
  out = fr_align.warp_affine(img, shift, (9, 11))
  np.testing.assert_allclose(out[0, :8, :9], img[0, 1:, 2:], atol=1e-6)
  assert float(jnp.abs(out[0, 8:]).max()) == 0.0 and float(jnp.abs(out[0, :, 9:]).max()) == 0.0


def test_warp_bilinear_midpoint_and_supersample_average():
  img = jnp.arange(16.0).reshape(1, 4, 4, 1)
  half = np.array([[[1.0, 0, 0.5], [0, 1.0, 0.0]]], np.float32)
  out = fr_align.warp_affine(img, half, (4, 3))
  np.testing.assert_allclose(out[0, :, :, 0], (img[0, :, :3, 0] + img[0, :, 1:, 0]) / 2)
  # 2x downscale with 2x2 supersampling = 2x2 average pooling
  down = np.array([[[2.0, 0, 0.5], [0, 2.0, 0.5]]], np.float32)
  pooled = img[0, :, :, 0].reshape(2, 2, 2, 2).mean(axis=(1, 3))
  np.testing.assert_allclose(fr_align.warp_affine(img, down, (2, 2), 2)[0, :, :, 0], pooled)


def test_warp_is_differentiable_in_the_image_and_jits_with_transform_as_data():
  img = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  t = np.stack([np.array([[0.5, 0.1, 3.0], [-0.1, 0.5, 4.0]], np.float32)] * 2)
  f = jax.jit(lambda x, t: jnp.sum(fr_align.warp_affine(x, t, (8, 8), 2) ** 2))
  g = jax.grad(f)(img, t)
  assert g.shape == img.shape and float(jnp.abs(g).sum()) > 0
  f(img, t * 1.01)  # a new transform is data: no retrace needed
  assert f._cache_size() == 1  # noqa: SLF001


def test_similarity_transform_recovers_a_known_similarity():
  rng = np.random.default_rng(0)
  dst = rng.uniform(0, 100, (5, 2))
  ang, scale, shift = 0.3, 2.5, np.array([10.0, -4.0])
  rot = scale * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
  t = fr_align.similarity_transform(dst, dst @ rot.T + shift)
  np.testing.assert_allclose(t, np.concatenate([rot, shift[:, None]], 1), atol=1e-9)


def test_loose_transform_covers_the_landmark_box():
  lm = np.array([[10.0, 20.0], [50.0, 20.0], [30.0, 80.0]])
  t = fr_align.loose_transform(lm, 64)
  corners = np.array([[-0.5, -0.5, 1.0], [63.5, 63.5, 1.0]]) @ t.T
  side = fr_align.LOOSE_SCALE * 60
  np.testing.assert_allclose(corners, [[30 - side / 2, 50 - side / 2],
                                       [30 + side / 2, 50 + side / 2]])


@pytest.mark.skipif(not os.path.isfile(ASTRONAUT), reason="run tools/fetch_assets.py")
def test_dlib_chip_geometry_matches_dlib_get_face_chip():
  """At a chip scale < 2 dlib samples bilinearly, as we do: same pixels up to rounding."""
  dlib = pytest.importorskip("dlib")
  photo = image_io.read_rgb(ASTRONAUT)
  box = align.largest_face_box(photo)
  t = fr_align.dlib_chip_transform(photo, box)
  assert np.sqrt(abs(np.linalg.det(t[:, :2]))) < 2.0
  rect = dlib.rectangle(*box)
  chip = dlib.get_face_chip(photo, align.dlib_descriptor_models()[0](photo, rect), 150, 0.25)
  ours = np.asarray(fr_align.warp_affine(jnp.asarray(photo[None], jnp.float32), t[None],
                                         (150, 150)))[0]
  assert np.abs(ours - chip).mean() < 1.0
  crop = fr_align.aligned_crop(photo, "arcface", box, (112, 112))
  assert crop.shape == (112, 112, 3) and 0.0 <= crop.min() and crop.max() <= 1.0
