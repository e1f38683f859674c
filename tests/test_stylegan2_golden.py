"""StyleGAN2 against the official PyTorch run's golden vectors (recipe weights): the
torch-shaped graph (1024 and 256) and the fast graphs (256), and float64 (slow)."""
import jax
import pytest

from clip2protect_jax import parity
from clip2protect_jax.parity import recipe
from clip2protect_jax.parity import stylegan2 as parity_stylegan2

GOLDEN = "tests/golden"


def test_golden_parity_float32():
  comparisons = parity.run_item("stylegan2", GOLDEN, recipe.load_manifest(GOLDEN))
  names = {c.output for c in comparisons}
  assert {"g1024_img_crop", "g1024_img_sub4", "g256_img", "g256_grad_wplus",
          "g256_grad_noise2"} <= names
  bad = [c.line() for c in comparisons if not c.ok]
  assert not bad, "\n".join(bad)


@pytest.mark.parametrize("upsample_impl", ["subpixel", "phases", "taps"])
def test_golden_parity_of_the_fast_graphs_256(upsample_impl):
  """The graphs that compute the same function differently (the config's default:
  sub-pixel upsampling, batch-grouped weight gradients, fused modulation where it pays;
  phase-split and taps upsampling) against the official PyTorch run's image and
  gradients, each sample as its own batch-1 call, as pivotal tuning runs each image (the
  batch of 2 sharing one generator is the same function by
  test_stylegan2.py::test_weight_modulation_is_the_same_function, and 2.4x slower on
  XLA:CPU)."""
  manifest = recipe.load_manifest(GOLDEN)
  entry = manifest["models"]["stylegan2_256"]
  graph = dict(upsample_impl=upsample_impl, conv_impl="grouped", modulation="auto")
  comparisons = parity_stylegan2.compare_256(
      recipe.load_arrays(GOLDEN, entry["file"]), entry, float64=False, graph=graph,
      per_sample=True)
  assert any(c.output == "g256_grad_wplus" for c in comparisons)
  bad = [c.line() for c in comparisons if not c.ok]
  assert not bad, "\n".join(bad)


@pytest.mark.slow
def test_golden_parity_float64_256():
  """float64 against the official float64 run: any semantic difference shows above 1e-10.

  Only the 256 model (image and all gradients). float64 convolutions are slow on XLA:CPU
  (about 9 minutes on 2 cores), so this runs with `pytest -m slow`;
  `tools/parity.py --golden ... --float64` runs the 1024 model too.
  """
  manifest = recipe.load_manifest(GOLDEN)
  entry = manifest["models"]["stylegan2_256"]
  with jax.enable_x64(True):
    comparisons = parity_stylegan2.compare_256(
        recipe.load_arrays(GOLDEN, entry["file"]), entry, float64=True)
  assert any(c.output == "g256_grad_wplus_f64" for c in comparisons)
  bad = [c.line() for c in comparisons if not c.ok]
  assert not bad, "\n".join(bad)
