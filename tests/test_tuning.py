"""Stage 1, pivotal tuning, on a tiny generator and a randomly initialised LPIPS."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
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
  result = run_tuning(tuning_setup, ts)
  losses = result.losses
  assert result.per_image
  assert losses.shape == (4, 2)
  assert np.all(np.asarray(losses[-1]) < np.asarray(losses[0])), losses
  # The untouched mapping network is stored once, not once per image.
  jax.tree_util.tree_map(np.testing.assert_array_equal, result.params.shared,
                         {"style": tuning_setup["gen_params"]["style"]})
  alone = run_tuning(tuning_setup, ts, slice(1, 2))
  np.testing.assert_allclose(alone.losses[:, 0], losses[:, 1], rtol=1e-4)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                         alone.params.image(0), result.params.image(1))


@pytest.mark.parametrize("schedule", tuning.SCHEDULES)
def test_zero_tuning_steps_leave_the_pretrained_generator(tuning_setup, schedule):
  """tune.steps=0 (stage 2 on the pretrained generator): no losses, every image's tree is
  the pretrained one."""
  result = run_tuning(tuning_setup, tuning.TuningSettings(steps=0, schedule=schedule))
  assert result.losses.shape == (0, 2)
  for i in range(2 if result.per_image else 1):
    jax.tree_util.tree_map(np.testing.assert_array_equal, result.params.image(i),
                           tuning_setup["gen_params"])
  with pytest.raises(ValueError, match="tune.steps=-1: use 0 or more"):
    tuning.TuningSettings(steps=-1)


def test_tuning_equals_adam_over_every_parameter(tuning_setup):
  """The official step: Adam over ALL generator params, the mapping network's included.
  Its gradients are exact zeros with a fixed W+, so Adam leaves it bit-identical and the
  tuning step, which steps only the synthesis network, gives the same result."""
  t = tuning_setup
  ts = tuning.TuningSettings(steps=3, learning_rate=1e-2, loss_resolution=32)
  target = tuning.prepare_target(t["lpips"], ts, t["lpips_params"], t["targets"][:1])
  optimizer = tuning.make_optimizer(ts)

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(lambda p: tuning._batch_losses(  # pylint: disable=protected-access
        t["gen"], t["lpips"], ts, p, t["wplus0"][:1], [m[:1] for m in t["noise"]], target,
        t["lpips_params"])[0])(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = t["gen_params"], optimizer.init(t["gen_params"])
  for _ in range(ts.steps):
    params, opt_state = step(params, opt_state)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params["style"],
                         t["gen_params"]["style"])
  result = run_tuning(t, ts, slice(0, 1))
  assert result.params.shared.keys() == {"style"}
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                         result.params.image(0), params)


def test_tuning_cumulative_carries_the_generator(tuning_setup):
  per_image = tuning.TuningSettings(steps=3, learning_rate=1e-2, loss_resolution=32)
  cumulative = dataclasses.replace(per_image, schedule="cumulative")
  p_params, p_losses, _ = run_tuning(tuning_setup, per_image)
  c_params, c_losses, _ = run_tuning(tuning_setup, cumulative)
  # Image 0 starts from the pretrained generator either way; image 1 does not.
  np.testing.assert_allclose(c_losses[:, 0], p_losses[:, 0], rtol=1e-4)
  assert abs(float(c_losses[0, 1] - p_losses[0, 1])) > 1e-5
  a = jax.tree_util.tree_leaves(c_params.per_image["synthesis"])[0]
  b = jax.tree_util.tree_leaves(p_params.per_image["synthesis"])[0]
  np.testing.assert_allclose(a[0], b[0], rtol=1e-4, atol=1e-5)  # lr 1e-2 steps
  assert float(jnp.abs(a[1] - b[1]).max()) > 1e-6
  with pytest.raises(ValueError, match="schedule"):
    tuning.TuningSettings(schedule="sometimes")


def test_tuning_joint_is_one_shared_generator(tuning_setup):
  """The fast mode: one image alone tunes exactly as per_image; a zero weight (padding) has
  no effect on the shared generator; two images give ONE parameter set that fits both."""
  per_image = tuning.TuningSettings(steps=3, learning_rate=1e-2, loss_resolution=32)
  joint = dataclasses.replace(per_image, schedule="joint")
  alone = run_tuning(tuning_setup, per_image, slice(0, 1))
  result = run_tuning(tuning_setup, joint, slice(0, 1))
  j_params, j_losses = result.params, result.losses
  assert not result.per_image and j_params.per_image == {} and result.carry is None
  np.testing.assert_allclose(j_losses, alone.losses, rtol=1e-4)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                         j_params.shared, alone.params.image(0))
  padded = run_tuning(tuning_setup, joint, weights=jnp.array([1.0, 0.0]))
  # Adam divides by sqrt(v): near-zero gradients amplify batch-vs-alone rounding (lr 1e-2).
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                         padded.params, j_params)
  np.testing.assert_allclose(padded.losses[:, 0], j_losses[:, 0], rtol=1e-4)
  both = run_tuning(tuning_setup, dataclasses.replace(joint, steps=4))
  assert both.losses.shape == (4, 2)
  assert np.all(np.asarray(both.losses[-1]) < np.asarray(both.losses[0])), both.losses
  assert (jax.tree_util.tree_structure(both.params.shared)
          == jax.tree_util.tree_structure(tuning_setup["gen_params"]))
  leaf = jax.tree_util.tree_leaves(both.params.shared)[0]
  assert leaf.shape == jax.tree_util.tree_leaves(tuning_setup["gen_params"])[0].shape


def test_synthesis_layer_resolutions_follow_the_layer_order():
  gen = stylegan2.Generator(64, style_dim=DIM, n_mlp=2, channel_max=16)
  names = stylegan2.abstract_params(gen)["synthesis"].keys()
  got = {n: stylegan2.synthesis_layer_resolution(n) for n in names}
  assert got == {"input": 4, "conv1": 4, "to_rgb1": 4, "convs_0": 8, "convs_1": 8,
                 "to_rgbs_0": 8, "convs_2": 16, "convs_3": 16, "to_rgbs_1": 16,
                 "convs_4": 32, "convs_5": 32, "to_rgbs_2": 32, "convs_6": 64,
                 "convs_7": 64, "to_rgbs_3": 64}
  with pytest.raises(ValueError, match="not a Synthesis layer"):
    stylegan2.synthesis_layer_resolution("dense_1")


def test_tuning_a_subset_of_layers(tuning_setup):
  """The fast mode max_resolution=8: the 16-px layers and the mapping network keep the
  pretrained weights (exactly, for every image), the layers <= 8 px move; batched equals
  alone; every layer tuned (max_resolution >= size) equals the default; joint and
  cumulative take it too."""
  base = tuning.TuningSettings(steps=3, learning_rate=1e-2, loss_resolution=32)
  subset = dataclasses.replace(base, max_resolution=8)
  pretrained = tuning_setup["gen_params"]
  pre_tuned, pre_frozen = tuning.split_params(subset, pretrained)
  result = run_tuning(tuning_setup, subset)
  assert result.per_image and result.losses.shape == (3, 2)
  tuned, frozen = result.params   # frozen: one copy for every image
  assert set(frozen) == {"style", "synthesis"} and set(tuned) == {"synthesis"}
  assert {stylegan2.synthesis_layer_resolution(n) for n in frozen["synthesis"]} == {16}
  assert {stylegan2.synthesis_layer_resolution(n) for n in tuned["synthesis"]} == {4, 8}
  jax.tree_util.tree_map(np.testing.assert_array_equal, frozen, pre_frozen)
  moved = [float(jnp.abs(a[i] - p).max()) for a, p in zip(
      jax.tree_util.tree_leaves(tuned), jax.tree_util.tree_leaves(pre_tuned)) for i in range(2)]
  assert min(moved) > 0, moved
  alone = run_tuning(tuning_setup, subset, slice(1, 2))
  np.testing.assert_allclose(alone.losses[:, 0], result.losses[:, 1], rtol=1e-4)
  # A shared-weight conv at batch 2 vs 1 rounds differently; Adam's 1/sqrt(v) amplifies it
  # (lr 1e-2 moves weights by ~1e-2 per step, so mixing images would show far above 1e-4).
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                         alone.params.image(0), result.params.image(1))

  every = run_tuning(tuning_setup, dataclasses.replace(base, max_resolution=SIZE))
  default = run_tuning(tuning_setup, base)
  np.testing.assert_array_equal(every.losses, default.losses)   # the same split, the same step
  jax.tree_util.tree_map(np.testing.assert_array_equal, every.params, default.params)

  for schedule in ("joint", "cumulative"):
    other = run_tuning(tuning_setup, dataclasses.replace(subset, schedule=schedule))
    kept = tuning.split_params(subset, other.params.image(1))[1]
    jax.tree_util.tree_map(np.testing.assert_array_equal, kept, pre_frozen)
    assert np.all(np.asarray(other.losses[-1]) < np.asarray(other.losses[0])), schedule
  # The cumulative carry is (whole params, Adam state of the tuned ones): what
  # pipeline.load_carry restores a stopped job's carry as.
  expected = jax.eval_shape(tuning.make_optimizer(subset).init, pre_tuned)
  assert (jax.tree_util.tree_structure(other.carry[1])
          == jax.tree_util.tree_structure(expected))
  assert jax.tree_util.tree_structure(other.carry[0]) == jax.tree_util.tree_structure(pretrained)
  for bad in (2, 12, -8):
    with pytest.raises(ValueError, match="max_resolution"):
      tuning.TuningSettings(max_resolution=bad)
