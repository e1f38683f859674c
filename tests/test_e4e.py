"""e4e encoder: golden parity (float32 and float64), converter strictness, input transform.

The recipe-v1 weights (1.07 GB, ~10 s to draw) are built and converted once per module.
e4e.npz holds a CelebA-HQ photo (`e2e_u8`), and photos are not committed
(../shared/faces/README.md), so the golden arrays are read from ../shared/golden and the
tests that need them skip where it is absent; the manifest is in tests/golden.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip2protect_jax.convert import e4e as convert_e4e
from clip2protect_jax.convert.common import WeightsMismatchError
from clip2protect_jax.models import e4e
from clip2protect_jax.parity import e4e as parity_e4e
from clip2protect_jax.parity.recipe import load_arrays

GOLDEN = "tests/golden"
SHARED_GOLDEN = "../shared/golden"


pytestmark = pytest.mark.usefixtures("fast_compiles")


@pytest.fixture(scope="module")
def entry():
  return parity_e4e.load_e4e_manifest(GOLDEN)["models"][parity_e4e.MODEL]


@pytest.fixture(scope="module")
def setup(entry):
  """(manifest entry, golden arrays, converted tree) built once."""
  if not os.path.exists(os.path.join(SHARED_GOLDEN, entry["file"])):
    pytest.skip(f"{SHARED_GOLDEN}/{entry['file']} not present (holds a photo)")
  golden = load_arrays(SHARED_GOLDEN, entry["file"])
  return entry, golden, parity_e4e.build(entry)


def test_golden_parity_float32(setup):
  entry, golden, tree = setup
  results = parity_e4e.evaluate("e4e", tree, golden, entry)
  assert all(r.ok for r in results), "\n".join(r.line() for r in results)
  names = {r.output for r in results}
  assert {"codes", "style_out", "wplus", "e2e_codes", "e2e_wplus"} <= names
  assert len([n for n in names if n.startswith("dbg")]) == 22
  # The margin: measured ~3e-6 against a 5e-5 tolerance (porting bugs give >= 1e-3).
  assert max(r.scaled for r in results) < 1e-5


def test_golden_parity_float64(setup):
  entry, golden, tree = setup
  with jax.enable_x64(True):
    # The aligned-photo sample only (float64 convolutions are slow on CPU);
    # tools/parity.py --float64 checks all of them.
    results = parity_e4e.evaluate("e4e", tree, golden, entry, float64=True, e2e_only=True)
  assert all(r.ok for r in results), "\n".join(r.line() for r in results)
  assert {r.output for r in results} == {"e2e_codes_f64", "e2e_wplus_f64"}


def test_expected_keys_are_the_official_state_dict(entry):
  official = {r[0]: tuple(r[1]) for r in entry["state_dict"]}
  assert convert_e4e.expected_torch_shapes(1024) == official
  assert len(official) == entry["checksums"]["n_entries"]


def test_converter_is_strict_and_reads_the_checkpoint_layout():
  shapes = convert_e4e.expected_torch_shapes(1024)
  sd = {"encoder." + k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
  sd["decoder.conv1.conv.weight"] = np.zeros((1, 512, 512, 3, 3), np.float32)  # ignored
  la = np.arange(512, dtype=np.float32)
  tree = convert_e4e.convert_checkpoint({"state_dict": sd, "latent_avg": la})
  assert tree["latent_avg"].shape == (18, 512) and np.all(tree["latent_avg"] == la)
  victim = "encoder.styles.17.linear.weight"
  cases = {
      "missing": ({k: v for k, v in sd.items() if k != victim}, victim[8:]),
      "unexpected": ({**sd, "encoder.extra.weight": np.zeros(2)}, "extra.weight"),
      "mis-shaped": ({**sd, victim: np.zeros((512, 511), np.float32)}, victim[8:]),
  }
  for kind, (bad, key) in cases.items():
    with pytest.raises(WeightsMismatchError) as err:
      convert_e4e.convert_checkpoint({"state_dict": bad, "latent_avg": la})
    assert kind in str(err.value) and key in str(err.value), str(err.value)
  with pytest.raises(WeightsMismatchError, match="no key starts with 'encoder.'"):
    convert_e4e.convert_checkpoint({"state_dict": {k[8:]: v for k, v in sd.items()},
                                    "latent_avg": la})
  with pytest.raises(WeightsMismatchError, match="latent_avg"):
    convert_e4e.convert_checkpoint({"state_dict": sd})
  with pytest.raises(WeightsMismatchError, match="latent_avg has shape"):
    convert_e4e.convert_checkpoint({"state_dict": sd, "latent_avg": np.zeros((14, 512))})


def test_input_transform_matches_official(setup):
  _, golden, _ = setup
  x = e4e.images_to_input(golden["e2e_u8"][None])
  assert x.dtype == np.float32
  np.testing.assert_array_equal(np.transpose(x, (0, 3, 1, 2)), golden["e2e_x"])


def test_align_corners_upsample_matches_torch():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).standard_normal((2, 5, 7, 3)).astype(np.float32)
  ours = e4e.upsample_align_corners(jnp.asarray(x), (10, 14))
  ref = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                                        size=(10, 14), mode="bilinear", align_corners=True)
  np.testing.assert_allclose(np.asarray(ours), ref.numpy().transpose(0, 2, 3, 1), atol=2e-6)


def test_n_styles():
  assert e4e.n_styles(1024) == 18 and e4e.n_styles(256) == 14
