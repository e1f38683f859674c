"""LPIPS-VGG v0.1: golden parity (float32 and float64), both converter namings and their
strictness, and the real v0.1 linear heads shipped by the PyPI lpips wheel."""
from __future__ import annotations

import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip2protect_jax import parity
from clip2protect_jax.convert import lpips as convert
from clip2protect_jax.convert.common import WeightsMismatchError
from clip2protect_jax.models.lpips import LPIPS, LPIPS_SCALE, LPIPS_SHIFT
from clip2protect_jax.parity.recipe import load_manifest, recipe_v1_state_dict

GOLDEN = "tests/golden"


@pytest.fixture(scope="module")
def manifest():
  return load_manifest(GOLDEN)


@pytest.fixture(scope="module")
def whole_sd(manifest):
  return recipe_v1_state_dict(manifest["models"]["lpips_vgg"])


def torchvision_naming(sd):
  """Whole LPIPS state_dict -> (torchvision vgg16 `features.*`, lpips heads `lin{K}.*`)."""
  vgg = {re.sub(r"^net\.slice\d\.", "features.", k): v for k, v in sd.items()
         if k.startswith("net.")}
  heads = {k.replace("lins.", "lin"): v for k, v in sd.items() if k.startswith("lins.")}
  return vgg, heads


@pytest.mark.parametrize("float64", [False, True])
def test_golden_parity(manifest, float64):
  with jax.enable_x64(float64):
    results = parity.run_item("lpips_vgg", GOLDEN, manifest, float64=float64)
  assert all(r.ok for r in results), "\n".join(r.line() for r in results)
  assert {r.output for r in results} >= {"out", "per_layer", "out_const_scaling"}


def test_lins_alias_is_the_held_value(whole_sd):
  params = convert.convert_lpips_state_dict(whole_sd)["params"]
  np.testing.assert_array_equal(params["lin2"], whole_sd["lins.2.model.1.weight"].reshape(-1))
  assert not np.array_equal(params["lin2"], whole_sd["lin2.model.1.weight"].reshape(-1))
  only_lin = {k: v for k, v in whole_sd.items() if not k.startswith("lins.")}
  p2 = convert.convert_lpips_state_dict(only_lin)["params"]
  np.testing.assert_array_equal(p2["lin2"], whole_sd["lin2.model.1.weight"].reshape(-1))


def test_torchvision_naming_gives_the_same_params(whole_sd):
  vgg, heads = torchvision_naming(whole_sd)
  classifier = {k: np.broadcast_to(np.float32(0), s)
                for k, s in convert._VGG16_CLASSIFIER.items()}  # a full vgg16 state_dict
  a = convert.convert_lpips(dict(vgg, **classifier), heads,
                            shift=whole_sd["scaling_layer.shift"],
                            scale=whole_sd["scaling_layer.scale"])
  b = convert.convert_lpips_state_dict(whole_sd)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  default = convert.convert_lpips(vgg, heads)["params"]
  np.testing.assert_allclose(default["shift"], LPIPS_SHIFT)
  np.testing.assert_allclose(default["scale"], LPIPS_SCALE)


def test_converters_are_strict(whole_sd):
  bad = {k: v for k, v in whole_sd.items() if k != "net.slice3.12.bias"}
  with pytest.raises(WeightsMismatchError, match=r"missing.*net\.slice3\.12\.bias"):
    convert.convert_lpips_state_dict(bad)
  bad = dict(whole_sd, **{"net.slice5.30.weight": np.zeros((512, 512, 3, 3), np.float32)})
  with pytest.raises(WeightsMismatchError, match=r"unexpected.*net\.slice5\.30\.weight"):
    convert.convert_lpips_state_dict(bad)
  vgg, heads = torchvision_naming(whole_sd)
  heads["lin3.model.1.weight"] = np.zeros((1, 256, 1, 1), np.float32)
  with pytest.raises(WeightsMismatchError,
                     match=r"mis-shaped: lin3\.model\.1\.weight has shape \(1, 256, 1, 1\)"):
    convert.convert_lpips(vgg, heads)
  vgg["features.2.weight"] = vgg["features.2.weight"][:32]
  with pytest.raises(WeightsMismatchError, match=r"mis-shaped: features\.2\.weight"):
    convert.convert_lpips(vgg, torchvision_naming(whole_sd)[1])


def test_real_v01_heads_from_the_lpips_wheel(whole_sd):
  """The lpips wheel's v0.1 heads (non-negative, as trained) load through convert_lpips;
  with them LPIPS(x, x) ~ 0 and LPIPS grows with the perturbation."""
  torch = pytest.importorskip("torch", reason="torch reads the wheel's .pth heads")
  spec = importlib.util.find_spec("lpips")
  if spec is None:
    pytest.skip("lpips wheel absent: pip install --no-deps lpips==0.1.4")
  path = os.path.join(spec.submodule_search_locations[0], "weights", "v0.1", "vgg.pth")
  heads = {k: v.numpy() for k, v in
           torch.load(path, map_location="cpu", weights_only=True).items()}
  vgg, _ = torchvision_naming(whole_sd)
  params = convert.convert_lpips(vgg, heads)
  assert all(float(params["params"][f"lin{k}"].min()) >= 0 for k in range(5))
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32))
  f = jax.jit(LPIPS().apply)
  small, large = f(params, x, x + 0.01), f(params, x, x + 0.3)
  assert abs(float(f(params, x, x)[0])) < 1e-10
  assert 0 < float(small[0]) < float(large[0])


def test_convert_tool_lpips_kind(tmp_path):
  """tools/convert_checkpoint.py --kind=lpips: torchvision VGG16 weights + the installed lpips
  package's heads (or one whole lpips.LPIPS state_dict) -> a folder load_lpips restores."""
  torch = pytest.importorskip("torch")
  import subprocess
  import sys
  from clip2protect_jax import checkpoints, weights
  rng = np.random.default_rng(0)
  vgg = {k: rng.standard_normal(s).astype(np.float32) for k, s in convert.vgg_shapes().items()}
  heads = {k: np.abs(rng.standard_normal(s)).astype(np.float32)
           for k, s in convert.head_shapes().items()}
  for name, sd in (("vgg16.pth", vgg), ("heads.pth", heads)):
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / name)
  tool = [sys.executable, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools",
                                       "convert_checkpoint.py"), "--kind=lpips"]
  proc = subprocess.run(tool + [f"--input={tmp_path / 'vgg16.pth'}", f"--lpips_heads="
                                f"{tmp_path / 'heads.pth'}", f"--output={tmp_path / 'out'}"],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  model, variables, _ = weights.load_lpips(str(tmp_path / "out"), jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, variables, convert.convert_lpips(vgg, heads))
  assert checkpoints.load_metadata(str(tmp_path / "out"))["kind"] == "lpips"
  whole = {"scaling_layer.shift": np.reshape(LPIPS_SHIFT, (1, 3, 1, 1)),
           "scaling_layer.scale": np.reshape(LPIPS_SCALE, (1, 3, 1, 1)), **heads,
           **{k2: vgg[k1] for k1, k2 in zip(convert.vgg_shapes(),
                                            convert.vgg_shapes(lambda s, i: f"net.slice{s}.{i}"))}}
  torch.save({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in whole.items()},
             tmp_path / "whole.pth")
  proc = subprocess.run(tool + [f"--input={tmp_path / 'whole.pth'}",
                                f"--output={tmp_path / 'out_whole'}"],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  jax.tree.map(np.testing.assert_allclose, weights.load_lpips(
      str(tmp_path / "out_whole"), jax.random.key(0))[1], variables)
  checkpoints.save(str(tmp_path / "other"), variables, {"kind": "clip"})
  with pytest.raises(ValueError, match="holds a 'clip' checkpoint, not lpips"):
    weights.load_lpips(str(tmp_path / "other"), jax.random.key(0))


def test_bfloat16_trunk_close_to_the_official_float32_output(manifest):
  """LPIPS(dtype=bfloat16) (tune.lpips_dtype): the VGG trunk in bf16, normalisation and
  distance in float32; within 3e-2 of the official fp32 distances on the golden inputs,
  and measurably not float32."""
  from clip2protect_jax.parity import lpips as lpips_parity
  from clip2protect_jax.parity.recipe import load_arrays
  g = load_arrays(GOLDEN, manifest["models"]["lpips_vgg"]["file"])
  x0, x1 = (np.transpose(g[k], (0, 2, 3, 1)) for k in ("in0", "in1"))
  out = LPIPS(dtype=jnp.bfloat16).apply(lpips_parity.recipe_params(manifest), x0, x1)
  assert out.dtype == jnp.float32
  rel = np.abs(np.asarray(out) - g["out"].reshape(-1)) / np.abs(g["out"].reshape(-1))
  assert 1e-5 < rel.max() < 3e-2, rel   # 3.9e-3 and 4.5e-3 on this CPU


def test_features_once_then_distance_is_the_official_output(manifest):
  """Stage 1 computes the target's features once (LPIPS.features) and each step's
  distance from them (LPIPS.distance): the same numbers as one __call__ and the golden."""
  from clip2protect_jax.parity import lpips as lpips_parity
  from clip2protect_jax.parity.recipe import load_arrays
  g = load_arrays(GOLDEN, manifest["models"]["lpips_vgg"]["file"])
  x0, x1 = (np.transpose(g[k], (0, 2, 3, 1)) for k in ("in0", "in1"))
  model, params = LPIPS(), lpips_parity.recipe_params(manifest)
  f0, f1 = (model.apply(params, x, method=LPIPS.features) for x in (x0, x1))
  assert [f.shape[1:] for f in f0] == [(64, 64, 64), (32, 32, 128), (16, 16, 256),
                                       (8, 8, 512), (4, 4, 512)]
  total, per_layer = model.apply(params, f0, f1, per_layer=True, method=LPIPS.distance)
  np.testing.assert_allclose(total, model.apply(params, x0, x1), rtol=1e-6)
  np.testing.assert_allclose(total, g["out"].reshape(-1), rtol=1e-5)
  np.testing.assert_allclose(per_layer, g["per_layer"].reshape(per_layer.shape), rtol=1e-5)
