"""Stage 2 (adversarial latent search) on tiny models."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip2protect_jax import protect, tuning
from clip2protect_jax.losses import fr_adversarial_loss
from clip2protect_jax.models import stylegan2
from clip2protect_jax.models.clip import CLIP, CLIPConfig
from clip2protect_jax.models.face import registry

# No `fast_compiles` here: these tests spend their time running stage-2 steps, which
# XLA:CPU's unoptimised code runs slower by more than it saves in compilation (this
# file: 306 s with it, 156 s without, on 2 cores).
SIZE, DIM = 16, 32
TINY_FR = ("tiny_fr_a", "tiny_fr_b")


class TinyFR(nn.Module):
  """A small conv embedder standing in for an FR surrogate (tests only)."""
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2))(x))
    x = nn.Conv(8, (3, 3))(x)
    return nn.Dense(12)(x.reshape(x.shape[0], -1))


for _name in TINY_FR:
  if _name not in registry.names():
    registry.register(registry.FRModel(
        _name, TinyFR, lambda sd: sd, "none", (16, 16), (-1.0, 1.0), 12, False,
        {0.1: 0.1, 0.01: 0.2, 0.001: 0.3}, "tiny test model"))

ALIGNED_FR = "tiny_fr_aligned"
if ALIGNED_FR not in registry.names():  # a landmark-aligned surrogate (fr_align warp)
  registry.register(registry.FRModel(
      ALIGNED_FR, TinyFR, lambda sd: sd, "none", (12, 12), (0.0, 255.0), 12, False,
      {0.1: 0.1, 0.01: 0.2, 0.001: 0.3}, "tiny aligned test model", alignment="arcface"))


@pytest.fixture(scope="module")
def setup():
  gen = stylegan2.Generator(SIZE, style_dim=DIM, n_mlp=2, channel_max=16)
  gen_params = stylegan2.init_params(gen, jax.random.key(0))
  gen_params = jax.tree_util.tree_map_with_path(  # make the noise matter
      lambda p, x: jnp.full_like(x, 0.5) if "noise_weight" in jax.tree_util.keystr(p) else x,
      gen_params)
  clip_model = CLIP(CLIPConfig(embed_dim=16, vision_layers=1, vision_width=32,
                               vision_heads=2, transformer_width=32, transformer_heads=2,
                               transformer_layers=1))
  clip_params = jax.jit(lambda k: clip_model.init(k, jnp.zeros((1, 224, 224, 3)),
                                                  method=clip_model.encode_image))(
                                                      jax.random.key(1))
  fr_params = {m: TinyFR().init(jax.random.key(i + 2), jnp.zeros((1, 16, 16, 3)))["params"]
               for i, m in enumerate(TINY_FR)}
  text = jax.random.normal(jax.random.key(5), (2, 6, 16))
  text = text / jnp.linalg.norm(text, axis=-1, keepdims=True)
  shared = protect.SharedInputs(clip_params, fr_params, text[0], text[1])
  models = protect.ProtectModels(gen, clip_model)
  n = 3
  wplus0 = jax.random.normal(jax.random.key(6), (n, gen.n_latent, DIM)) * 0.3
  noise = stylegan2.make_noise(jax.random.key(7), SIZE, batch=n)
  boxes = jnp.array([[2.0, 3.0, 14.0, 15.0], [0.0, 0.0, 16.0, 16.0], [4.4, 1.6, 12.5, 13.0]])
  sources = jax.random.uniform(jax.random.key(8), (n, SIZE, SIZE, 3))
  target = jax.random.uniform(jax.random.key(9), (20, 18, 3))
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(10), i))(jnp.arange(n))
  return dict(models=models, gen_params=tuning.BatchParams({}, gen_params), shared=shared,
              wplus0=wplus0, noise=noise, boxes=boxes, sources=sources, target=target,
              keys=keys, n=n)


def settings(**kw):
  base = dict(surrogates=TINY_FR, steps=3, trainable_rows=(3, 4, 5), noise_max_resolution=8,
              learning_rate=0.05)
  return protect.ProtectSettings(**{**base, **kw})


def consts_for(s, st, sl=slice(None)):
  return protect.prepare_constants(
      s["models"], st, s["gen_params"], s["wplus0"][sl], [m[sl] for m in s["noise"]],
      {"box": s["boxes"][sl]}, s["sources"][sl], s["target"], s["shared"], s["keys"][sl])


def run(s, st, sl=slice(None)):
  return protect.protect(s["models"], st, s["gen_params"], consts_for(s, st, sl),
                         s["shared"])


def test_batched_equals_per_image(setup):
  st = settings()
  images, state, _ = run(setup, st)
  assert images.shape == (3, SIZE, SIZE, 3)
  assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
  for i in range(setup["n"]):
    single, single_state, _ = run(setup, st, slice(i, i + 1))
    np.testing.assert_allclose(single[0], images[i], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(single_state.wplus[0], state.wplus[i], rtol=1e-4, atol=1e-5)


def test_per_image_generators_with_a_shared_half(setup):
  """Stage 2 after per-image tuning: each image has its own synthesis network (a leading
  image axis) and one mapping network serves all (tuning.BatchParams). Each image's result
  equals running it alone on its whole parameter tree."""
  st = settings(steps=2)
  whole, n = setup["gen_params"].shared, setup["n"]
  synthesis = jax.tree_util.tree_map(
      lambda x: jnp.stack([x * (1.0 + 0.1 * i) for i in range(n)]), whole["synthesis"])
  per_image = tuning.BatchParams({"synthesis": synthesis}, {"style": whole["style"]})
  images, _, _ = run(dict(setup, gen_params=per_image), st)
  for i in (0, 2):
    alone = dict(setup, gen_params=tuning.BatchParams({}, per_image.image(i)))
    np.testing.assert_allclose(run(alone, st, slice(i, i + 1))[0][0], images[i], rtol=1e-4,
                               atol=1e-5)
  shared_images, _, _ = run(setup, st)
  assert float(jnp.abs(images[2] - shared_images[2]).max()) > 1e-3
  with pytest.raises(TypeError, match="BatchParams"):
    protect.protect(setup["models"], st, whole, consts_for(setup, st), setup["shared"])


def test_gradients_reach_only_configured_rows_and_noise(setup):
  st = settings()
  consts = consts_for(setup, st)
  _, state, _ = protect.protect(setup["models"], st, setup["gen_params"], consts,
                                setup["shared"])
  moved = np.abs(np.asarray(state.wplus - setup["wplus0"])).max(axis=(0, 2))
  assert np.all(moved[:3] == 0.0), moved            # rows 0..2 frozen exactly
  assert np.all(moved[3:] > 1e-3), moved            # rows 3..5 optimised
  assert protect.optimised_noise_indices(SIZE, 8) == (0, 1, 2)
  assert len(state.noise) == 3
  for i, m in enumerate(state.noise):               # the low-res maps move
    assert float(jnp.abs(m - consts.noise[i]).max()) > 1e-3
  with pytest.raises(ValueError, match="out of range"):
    protect.row_mask(6, (2, 6))


def test_one_compilation_for_many_steps(setup):
  st = settings()
  consts = consts_for(setup, st)
  traces = []
  inner = protect.make_image_step(setup["models"], st)

  def counted(*args):
    traces.append(1)
    return inner(*args)

  step = jax.jit(jax.vmap(counted, in_axes=(0, None, 0, None)))
  state = jax.vmap(lambda c: protect.init_state(setup["models"], st, c))(consts)
  for _ in range(4):
    state, _ = step(state, setup["gen_params"], consts, setup["shared"])
  assert len(traces) == 1 and int(state.step[0]) == 4


def test_official_output_step_is_the_forward_before_the_last_update(setup):
  official, _, hist = run(setup, settings(steps=3, official_output_step=True))
  two_updates, _, _ = run(setup, settings(steps=2))
  three_updates, _, _ = run(setup, settings(steps=3))
  np.testing.assert_allclose(official, two_updates, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(official - three_updates).max()) > 1e-4
  assert hist["loss"].shape == (2, 3)


def test_adversarial_term_decreases(setup):
  st = settings(steps=8, clip_weight=0.0, latent_weight=0.0)
  _, _, hist = run(setup, st)
  adv = np.asarray(hist["adversarial"])
  assert np.all(adv[-1] < adv[0]), adv


def test_clip_shift_switch_changes_the_clip_term(setup):
  _, _, plain = run(setup, settings(steps=1))
  _, _, shifted = run(setup, settings(steps=1, official_clip_shift=True))
  np.testing.assert_allclose(plain["adversarial"], shifted["adversarial"], rtol=1e-6)
  assert float(jnp.abs(plain["clip"] - shifted["clip"]).max()) > 1e-6


def test_fr_adversarial_loss_formulas():
  e = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([0.0, 2.0])}
  target = {"a": jnp.array([1.0, 1.0]), "b": jnp.array([0.0, 1.0])}    # cos 0.7071, 1
  source = {"a": jnp.array([-1.0, 0.0]), "b": jnp.array([1.0, 0.0])}   # cos -1, 0
  t = (1 - 2 ** -0.5) + 0.0
  s = 2.0 + 1.0
  np.testing.assert_allclose(fr_adversarial_loss(e, target, source, "impersonation"), t,
                             rtol=1e-6)
  np.testing.assert_allclose(fr_adversarial_loss(e, target, source, "dodging"), -s, rtol=1e-6)
  np.testing.assert_allclose(
      fr_adversarial_loss(e, target, source, "dodging", official_dodging=True), t - s,
      rtol=1e-6)
  with pytest.raises(ValueError, match="impersonation"):
    fr_adversarial_loss(e, target, source, "hide")
  with pytest.raises(ValueError, match="unknown surrogate"):
    protect.ProtectSettings(surrogates=("nope",))


def test_aligned_surrogate_takes_its_per_image_warp(setup):
  """A surrogate with a landmark alignment sees x through its own [2, 3] warp per image:
  swapping two images' warps changes their results and leaves the third's alone."""
  s = dict(setup)
  params = TinyFR().init(jax.random.key(11), jnp.zeros((1, 12, 12, 3)))["params"]
  s["shared"] = setup["shared"]._replace(fr_params={**setup["shared"].fr_params,
                                                    ALIGNED_FR: params})
  st = settings(surrogates=(TINY_FR[0], ALIGNED_FR))
  warps = np.array([[[1.1, 0.1, 1.0], [-0.1, 1.1, 2.0]], [[0.9, 0.0, 2.0], [0.0, 0.9, 1.0]],
                    [[1.2, -0.2, 0.5], [0.2, 1.2, 0.0]]], np.float32)
  aligned_target = {ALIGNED_FR: jax.random.uniform(jax.random.key(12), (12, 12, 3))}

  def run_with(w):
    consts = protect.prepare_constants(
        s["models"], st, s["gen_params"], s["wplus0"], s["noise"],
        {"box": s["boxes"], ALIGNED_FR: w}, s["sources"], s["target"], s["shared"], s["keys"],
        aligned_target)
    return protect.protect(s["models"], st, s["gen_params"], consts, s["shared"])

  images, _, hist = run_with(warps)
  other, _, _ = run_with(warps[::-1].copy())   # same shapes: no second compilation
  np.testing.assert_allclose(other[1], images[1], rtol=1e-4, atol=1e-5)  # same warp
  assert float(jnp.abs(other[0] - images[0]).max()) > 1e-4  # image 0 got image 2's warp
  assert np.isfinite(np.asarray(hist["adversarial"])).all()
