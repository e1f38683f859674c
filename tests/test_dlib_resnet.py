"""DlibResNet (face-api's uint8-quantised TF.js weights) vs dlib's C++ face descriptor.

Real photos -> largest dlib HOG face (upsample 0, for speed) -> 5 landmarks ->
dlib.get_face_chip(150, 0.25); on that same chip dlib's `compute_face_descriptor(chip)`
(aligned-chip overload) vs the Flax module (one jit, fixed batch of 8). The residual
difference is the weights' uint8 quantisation (about 2-3% of the descriptor norm,
cosine ~0.9996); `python tools/parity_dlib_resnet.py` prints it per face.
Skips when the checkpoint files or dlib are missing.
"""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip2protect_jax.convert import dlib_resnet as convert
from clip2protect_jax.convert.common import WeightsMismatchError
from clip2protect_jax.models.face.dlib_resnet import DlibResNet

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tools"))
import parity_dlib_resnet as parity_tool  # noqa: E402

WEIGHTS = "checkpoints/face-api"
PHOTOS = {"biden": "assets/photos/sources/biden.jpg",
          "astronaut": "assets/photos/sources/astronaut.png",
          "obama": "assets/photos/targets/obama.jpg",
          "obama2": "assets/photos/targets/obama2.jpg"}
DEEPFACE = "../shared/faces/deepface"
DEEPFACE_PICK = ("img1.jpg", "img2.jpg", "img10.jpg", "img12.jpg")
BATCH = 8

# Measured on 68 real faces (assets/photos + all of shared/faces/deepface): cosine >=
# 0.99957, euclidean <= 0.044, max-abs <= 0.0114, relative <= 0.029; pairwise distances
# differ by <= 0.017. Bounds below leave margin.
MIN_COSINE = 0.999
MAX_DIST = 0.06
MAX_ABS = 0.02
MAX_REL = 0.04
MAX_PAIR_DIFF = 0.03
THRESHOLD = 0.6  # dlib's same-person euclidean distance

pytestmark = pytest.mark.usefixtures("fast_compiles")


@pytest.fixture(scope="module")
def params():
  if not os.path.isfile(os.path.join(WEIGHTS, convert.MANIFEST)):
    pytest.skip(f"{WEIGHTS}/{convert.MANIFEST} missing: run python tools/fetch_assets.py")
  return convert.load_dlib_resnet(WEIGHTS)


@pytest.fixture(scope="module")
def faces(params):
  """(names, uint8 chips [N,150,150,3], dlib descriptors [N,128], ours [N,128]), through the
  parity tool's own steps (tools/parity_dlib_resnet.py), detector upsample 0 for speed."""
  pytest.importorskip("dlib")
  from clip2protect_jax import align
  try:
    align.dlib_descriptor_models()
  except align.MissingModelError as e:
    pytest.skip(f"dlib model files missing: {e}")
  paths = dict(PHOTOS)
  if os.path.isdir(DEEPFACE):
    paths.update({f: os.path.join(DEEPFACE, f) for f in DEEPFACE_PICK
                  if os.path.isfile(os.path.join(DEEPFACE, f))})
  found, chips = parity_tool.face_chips([p for p in paths.values() if os.path.isfile(p)], 0)
  names = [n for n, p in paths.items() if p in found]
  if not set(PHOTOS) <= set(names):
    pytest.skip(f"example photos missing or without a face: run python tools/fetch_assets.py "
                f"(have {names})")
  chips, names = chips[:BATCH], names[:BATCH]
  return (names, chips, parity_tool.dlib_descriptors(chips),
          parity_tool.flax_descriptors(params, chips, BATCH))


def test_param_tree_matches_init(params):
  x = jax.ShapeDtypeStruct((1, 150, 150, 3), jnp.float32)
  want = jax.eval_shape(DlibResNet().init, jax.random.PRNGKey(0), x)["params"]
  got_shapes = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), params)
  want_shapes = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), want)
  assert got_shapes == want_shapes
  assert len(jax.tree_util.tree_leaves(params)) == 117
  assert params["fc"]["kernel"].shape == (256, 128)
  assert params["conv32_down"]["conv"]["kernel"].shape == (7, 7, 3, 32)


def test_converter_is_strict(params, tmp_path):
  from clip2protect_jax.convert import tfjs
  w = tfjs.read_weights(os.path.join(WEIGHTS, convert.MANIFEST))
  assert set(w) == set(convert.expected_shapes())
  bad = dict(w)
  del bad["conv64_1/conv2/scale/biases"]
  bad["fc"] = bad["fc"].T
  with pytest.raises(WeightsMismatchError, match="conv64_1/conv2/scale/biases") as e:
    convert.convert_dlib_resnet(bad)
  assert "fc has shape (128, 256)" in str(e.value)
  with pytest.raises(FileNotFoundError, match="tools/fetch_assets.py"):
    convert.load_dlib_resnet(str(tmp_path))


def test_parity_with_dlib_cpp(faces):
  names, _, ref, ours = faces
  assert ours.shape == ref.shape == (len(names), 128)
  dist = np.linalg.norm(ours - ref, axis=1)
  cos = np.sum(ours * ref, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
  rel = dist / np.linalg.norm(ref, axis=1)
  mabs = np.abs(ours - ref).max(1)
  report = "\n".join(f"{n:12s} cos {c:.6f} eucl {d:.4f} maxabs {m:.4f} rel {r:.4f}"
                     for n, c, d, m, r in zip(names, cos, dist, mabs, rel))
  assert cos.min() >= MIN_COSINE, report
  assert dist.max() < MAX_DIST, report
  assert mabs.max() < MAX_ABS, report
  assert rel.max() < MAX_REL, report
  # Pairwise distances (what the 0.6 threshold is applied to) agree even more closely.
  pd = lambda d: np.linalg.norm(d[:, None] - d[None], axis=-1)  # noqa: E731
  assert np.abs(pd(ours) - pd(ref)).max() < MAX_PAIR_DIFF, report


def test_same_person_decision(faces):
  names, _, ref, ours = faces
  i = {n: k for k, n in enumerate(names)}
  pairs = {("obama", "obama2"): True, ("obama", "biden"): False,
           ("obama2", "biden"): False}
  for (a, b), same in pairs.items():
    d_ref = np.linalg.norm(ref[i[a]] - ref[i[b]])
    if (d_ref < THRESHOLD) != same:
      pytest.skip(f"dlib C++ itself calls {a}/{b} {'different' if same else 'same'} "
                  f"({d_ref:.3f})")
    d = np.linalg.norm(ours[i[a]] - ours[i[b]])
    assert (d < THRESHOLD) == same, f"{a}/{b}: ours {d:.3f}, dlib {d_ref:.3f}"


def test_gradient_wrt_input(params, faces):
  """Finite, non-zero gradients w.r.t. the chip pixels (for adversarial optimisation)."""
  _, chips, ref, _ = faces
  x = jnp.asarray(chips[:1], jnp.float32)
  target = jnp.asarray(ref[1:2], jnp.float32)

  def loss(p, x):
    return jnp.sum((DlibResNet().apply({"params": p}, x) - target) ** 2)

  g = np.asarray(jax.jit(jax.grad(loss, argnums=1))(params, x))
  assert g.shape == x.shape and np.all(np.isfinite(g)) and np.abs(g).max() > 0
