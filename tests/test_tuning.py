"""Stage 1, pivotal tuning, on a tiny generator and a randomly initialised LPIPS."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip2protect_jax import tuning
from clip2protect_jax.models import stylegan2
from clip2protect_jax.models.lpips import LPIPS

pytestmark = pytest.mark.usefixtures("fast_compiles")
SIZE, DIM = 16, 32


@pytest.fixture(scope="module")
def tuning_setup():
  gen = stylegan2.Generator(SIZE, style_dim=DIM, n_mlp=2, channel_max=16)
  lpips_model = LPIPS()
  lpips_params = jax.jit(lpips_model.init)(jax.random.key(11), jnp.zeros((1, 32, 32, 3)),
                                           jnp.zeros((1, 32, 32, 3)))
  return dict(
      gen=gen, gen_params=stylegan2.init_params(gen, jax.random.key(0)),
      wplus0=jax.random.normal(jax.random.key(6), (2, gen.n_latent, DIM)) * 0.3,
      noise=stylegan2.make_noise(jax.random.key(7), SIZE, batch=2),
      lpips=lpips_model, lpips_params=lpips_params,
      targets=jax.random.uniform(jax.random.key(12), (2, SIZE, SIZE, 3), minval=-1, maxval=1))


def run_tuning(t, ts, sl=slice(0, 2), weights=None):
  return tuning.tune(t["gen"], t["lpips"], ts, t["gen_params"], t["lpips_params"],
                     t["wplus0"][sl], [m[sl] for m in t["noise"]], t["targets"][sl],
                     weights=weights)


def test_tuning_per_image_batched_equals_alone_and_fits(tuning_setup):
  ts = tuning.TuningSettings(steps=4, learning_rate=1e-2, loss_resolution=32)
  params, losses, _, per_image = run_tuning(tuning_setup, ts)
  assert per_image
  assert losses.shape == (4, 2)
  assert np.all(np.asarray(losses[-1]) < np.asarray(losses[0])), losses
  alone, alone_losses, _, _ = run_tuning(tuning_setup, ts, slice(1, 2))
  np.testing.assert_allclose(alone_losses[:, 0], losses[:, 1], rtol=1e-4)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a[0], b[1], rtol=1e-4, atol=1e-5), alone, params)


def test_tuning_cumulative_carries_the_generator(tuning_setup):
  per_image = tuning.TuningSettings(steps=3, learning_rate=1e-2, loss_resolution=32)
  cumulative = dataclasses.replace(per_image, schedule="cumulative")
  p_params, p_losses, _, _ = run_tuning(tuning_setup, per_image)
  c_params, c_losses, _, _ = run_tuning(tuning_setup, cumulative)
  # Image 0 starts from the pretrained generator either way; image 1 does not.
  np.testing.assert_allclose(c_losses[:, 0], p_losses[:, 0], rtol=1e-4)
  assert abs(float(c_losses[0, 1] - p_losses[0, 1])) > 1e-5
  a = jax.tree_util.tree_leaves(c_params["synthesis"])[0]
  b = jax.tree_util.tree_leaves(p_params["synthesis"])[0]
  np.testing.assert_allclose(a[0], b[0], rtol=1e-4, atol=1e-5)  # lr 1e-2 steps
  assert float(jnp.abs(a[1] - b[1]).max()) > 1e-6
  with pytest.raises(ValueError, match="schedule"):
    tuning.TuningSettings(schedule="sometimes")


def test_tuning_joint_is_one_shared_generator(tuning_setup):
  """The fast mode: one image alone tunes exactly as per_image; a zero weight (padding) has
  no effect on the shared generator; two images give ONE parameter set that fits both."""
  per_image = tuning.TuningSettings(steps=3, learning_rate=1e-2, loss_resolution=32)
  joint = dataclasses.replace(per_image, schedule="joint")
  p_params, p_losses, _, _ = run_tuning(tuning_setup, per_image, slice(0, 1))
  j_params, j_losses, carry, shared = run_tuning(tuning_setup, joint, slice(0, 1))
  assert not shared and carry is None
  np.testing.assert_allclose(j_losses, p_losses, rtol=1e-4)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b[0], rtol=1e-4,
                                                                 atol=1e-5), j_params, p_params)
  padded = run_tuning(tuning_setup, joint, weights=jnp.array([1.0, 0.0]))
  # Adam divides by sqrt(v): near-zero gradients amplify batch-vs-alone rounding (lr 1e-2).
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                         padded.params, j_params)
  np.testing.assert_allclose(padded.losses[:, 0], j_losses[:, 0], rtol=1e-4)
  both = run_tuning(tuning_setup, dataclasses.replace(joint, steps=4))
  assert both.losses.shape == (4, 2)
  assert np.all(np.asarray(both.losses[-1]) < np.asarray(both.losses[0])), both.losses
  leaf = jax.tree_util.tree_leaves(both.params)[0]
  assert leaf.shape == jax.tree_util.tree_leaves(tuning_setup["gen_params"])[0].shape
