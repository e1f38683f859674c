"""Face-recognition surrogates: golden parity, converter strictness, embedding API, gradients.

Each model's recipe-v1 weights are built and converted once (module-scoped fixture).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip2protect_jax import checkpoints, parity, resize
from clip2protect_jax.convert import face as convert_face_mod
from clip2protect_jax.convert.common import WeightsMismatchError
from clip2protect_jax.models.face import registry
from clip2protect_jax.parity import face as parity_face
from clip2protect_jax.parity.recipe import load_arrays, load_manifest

GOLDEN = "tests/golden"
ITEMS = ["irse50", "ir152", "mobileface", "facenet"]  # golden item names
REGISTRY_NAME = {"irse50": "irse50", "ir152": "ir152", "mobileface": "mobile_face",
                 "facenet": "facenet"}


pytestmark = pytest.mark.usefixtures("fast_compiles")


@pytest.fixture(scope="module")
def manifest():
  return load_manifest(GOLDEN)


@pytest.fixture(scope="module", params=ITEMS)
def model(request, manifest):
  """(item, spec, params, golden arrays, jitted embed) for one model, built once."""
  item = request.param
  spec, _, params = parity_face.load_model(item, manifest)
  golden = load_arrays(GOLDEN, manifest["models"][item]["file"])
  embed = jax.jit(functools.partial(registry.embed, spec.name))
  return item, spec, params, golden, embed


def nhwc(x):
  return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


def scaled_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("item", ITEMS)
def test_golden_parity(item, manifest):
  results = parity.run_item(item, GOLDEN, manifest)
  assert all(r.ok for r in results), "\n".join(r.line() for r in results)
  want = {"emb", "emb_prenorm"} if item != "ir152" else {"emb"}
  assert {r.output for r in results} == want


@pytest.mark.parametrize("item", ITEMS)
def test_expected_keys_are_the_official_state_dict(item, manifest):
  """The key set derived from the Flax module equals the official state_dict exactly."""
  official = {r[0]: tuple(r[1]) for r in manifest["models"][item]["state_dict"]}
  assert convert_face_mod.expected_torch_shapes(REGISTRY_NAME[item]) == official


@pytest.mark.parametrize("name", ["mobile_face", "facenet"])
def test_converter_is_strict(name):
  shapes = convert_face_mod.expected_torch_shapes(name)
  sd = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}  # no memory
  victim = next(k for k in shapes if k.endswith("running_var"))
  cases = {
      "missing": ({k: v for k, v in sd.items() if k != victim}, victim),
      "unexpected": ({**sd, "extra_head.weight": np.zeros((2, 2), np.float32)},
                     "extra_head.weight"),
      "mis-shaped": ({**sd, victim: np.zeros((shapes[victim][0] + 1,), np.float32)}, victim),
  }
  for kind, (bad, key) in cases.items():
    with pytest.raises(WeightsMismatchError) as err:
      convert_face_mod.convert_face(name, bad)
    assert kind in str(err.value) and key in str(err.value), str(err.value)
  # Files saved before torch 0.4.1 have no BatchNorm counters; torch's strict load accepts
  # that, and so does the converter (the counters are unused).
  no_counters = {k: v for k, v in sd.items() if not k.endswith(".num_batches_tracked")}
  assert len(no_counters) < len(sd)
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         convert_face_mod.convert_face(name, no_counters),
                         convert_face_mod.convert_face(name, sd))


def test_converted_tree_matches_module(model):
  """The converted params have exactly the leaves/shapes of the module's init."""
  _, spec, params, golden, _ = model
  x = jax.ShapeDtypeStruct((1, *spec.input_size, 3), jnp.float32)
  abstract = jax.eval_shape(spec.module().init, jax.random.PRNGKey(0), x)["params"]
  checkpoints.compare_trees(abstract, params, spec.name)  # raises on any mismatch
  assert all(a.dtype == np.float32 for a in jax.tree_util.tree_leaves(params))


def test_embed_batched_vmapped_and_input_gradient(model):
  item, spec, params, golden, embed = model
  x = nhwc(golden["x"])
  batched = np.asarray(embed(params, x))
  # embed() is the official forward: golden output, normalised iff the registry says so.
  assert batched.shape == (2, spec.embedding_size)
  assert scaled_err(batched, golden["emb"]) < parity_face.TOL
  norms = np.linalg.norm(batched, axis=1)
  assert np.allclose(norms, 1.0, atol=1e-5) == spec.l2_normalized, norms

  # Per image, vmapped (as the protect step is): loss_i = cos(f(x_i), f(x_other)).
  def loss(xi, target, p):
    e = registry.embed(spec.name, p, xi[None])[0]
    return registry.cosine_similarity(e, target), e

  step = jax.jit(jax.vmap(jax.value_and_grad(loss, has_aux=True), in_axes=(0, 0, None)))
  targets = jnp.asarray(batched[::-1])
  (values, per_image), grads = step(x, targets, params)  # params are an argument, not constants
  # vmapped per-image == batched, up to float32 noise (XLA's CPU convolutions block batch
  # sizes differently, ~4e-6 scaled for IR-SE-50); mixing images would give O(1) errors.
  assert scaled_err(per_image, batched) < 2e-5
  cos01 = float(registry.cosine_similarity(batched[0], batched[1]))
  np.testing.assert_allclose(values, [cos01, cos01], atol=1e-5)
  grads = np.asarray(grads)
  assert np.all(np.isfinite(grads)) and np.mean(grads != 0) > 0.9

  # The gradient matches a central finite difference along its own direction.
  gnorm = np.linalg.norm(grads.reshape(2, -1), axis=1)
  direction = jnp.asarray(grads / gnorm[:, None, None, None])
  h = 0.05  # a step of L2 norm 0.05 over 37k-77k pixel values
  f = lambda xs: np.asarray(registry.cosine_similarity(embed(params, xs), targets))
  fd = (f(x + h * direction) - f(x - h * direction)) / (2 * h)
  np.testing.assert_allclose(fd, gnorm, rtol=0.05, err_msg=item)


def test_registry_entries():
  want = {  # REFERENCE.md section 6: FAR 0.1 / 0.01 / 0.001 thresholds, input size, normalised
      "ir152": ((0.094632, 0.166788, 0.227922), (112, 112), False, "ir152.pth"),
      "irse50": ((0.144840, 0.241045, 0.312703), (112, 112), True, "irse50.pth"),
      "facenet": ((0.256587, 0.409131, 0.591191), (160, 160), True, "facenet.pth"),
      "mobile_face": ((0.183635, 0.301611, 0.380878), (112, 112), True, "mobile_face.pth"),
  }
  assert set(want) <= set(registry.names())
  for name, (thr, size, normed, weights) in want.items():
    spec = registry.get(name)
    assert tuple(spec.thresholds[f] for f in (0.1, 0.01, 0.001)) == thr
    assert (spec.input_size, spec.l2_normalized, spec.weights_file) == (size, normed, weights)
    assert spec.value_range == (-1.0, 1.0) and spec.embedding_size == 512
  # `mobileface` is human-models' MobileFace (256-D), not the paper's MobileFaceNet.
  assert registry.get("mobileface").embedding_size == 256
  assert {registry.get(m).alignment for m in ("dlib_resnet", "faceres", "mobileface")} == {
      "dlib_chip", "loose", "arcface"}
  with pytest.raises(KeyError, match="unknown FR model"):
    registry.get("arcface_r100")
  with pytest.raises(ValueError, match="already registered"):
    registry.register(registry.get("irse50"))
  cos = jnp.asarray([0.2, 0.25])
  assert registry.is_match("irse50", cos).tolist() == [False, True]
  assert registry.is_match("irse50", cos, far=0.1).tolist() == [True, True]


def test_cosine_helpers():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(3, 8)), rng.normal(size=(4, 8))
  ref = (a @ b.T) / np.linalg.norm(a, axis=1)[:, None] / np.linalg.norm(b, axis=1)[None]
  np.testing.assert_allclose(registry.cosine_matrix(a, b), ref, rtol=1e-5)
  np.testing.assert_allclose(registry.cosine_similarity(a[:, None], b[None]), ref, rtol=1e-5)
  # Scale invariance (IR152's raw embeddings are ~1e9 in norm).
  np.testing.assert_allclose(registry.cosine_similarity(a * 1e9, b[:3]),
                             np.diag(ref[:, :3]), rtol=1e-5)


def test_preprocess_is_crop_scale_resize():
  """registry.preprocess == official: img[:, y1:y2, x1:x2], (x-0.5)*2, bilinear to the size."""
  rng = np.random.default_rng(1)
  img = rng.uniform(0, 1, (2, 200, 180, 3)).astype(np.float32)
  boxes = np.array([[20.2, 30.7, 150.4, 190.1], [0.0, 5.5, 180.0, 120.0]], np.float32)
  for name in ("irse50", "facenet"):
    spec = registry.get(name)
    ours = jax.jit(registry.preprocess, static_argnums=0)(name, img, boxes)
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
      crop = (img[i:i + 1, round(y1):round(y2), round(x1):round(x2)] - 0.5) * 2
      ref = resize.resize_bilinear(jnp.asarray(crop), spec.input_size)
      np.testing.assert_allclose(ours[i:i + 1], ref, atol=1e-6)
    assert ours.shape == (2, *spec.input_size, 3) and float(jnp.abs(ours).max()) <= 1.0


def test_new_model_is_one_register_call():
  """A model added to the registry works with embed() and the thresholds at once."""
  import flax.linen as nn

  class Tiny(nn.Module):
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x):
      return nn.Dense(4, dtype=self.dtype)(x.reshape(x.shape[0], -1))

  spec = registry.FRModel("tiny_test", Tiny, lambda sd: sd, "tiny.pth", (4, 4), (-1.0, 1.0),
                          4, False, {0.01: 0.5})
  registry.register(spec)
  try:
    x = jnp.ones((2, 4, 4, 3))
    params = Tiny().init(jax.random.PRNGKey(0), x)["params"]
    emb = registry.embed("tiny_test", params, x)
    assert emb.shape == (2, 4)
    np.testing.assert_allclose(registry.cosine_similarity(emb[0], emb[1]), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="expects"):
      registry.embed("tiny_test", params, jnp.ones((2, 5, 5, 3)))
  finally:
    registry._REGISTRY.pop("tiny_test")
