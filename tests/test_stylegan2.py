"""StyleGAN2 on tiny generators: converter strictness, the graphs that compute the same
function, batching/vmap equivalence, compilation (golden parity: test_stylegan2_golden)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip2protect_jax.convert.common import WeightsMismatchError
from clip2protect_jax.convert.stylegan2 import convert_generator, expected_shapes
from clip2protect_jax.models import layers, stylegan2
from clip2protect_jax.models.layers import make_blur_kernel

pytestmark = pytest.mark.usefixtures("fast_compiles")  # compile-bound: ~2x faster
TINY = dict(size=16, style_dim=32, n_mlp=2, channel_max=16)


def tiny_model(**kw) -> stylegan2.Generator:
  return stylegan2.Generator(**{**TINY, **kw})


def tiny_torch_state_dict(seed: int = 0, **arch) -> dict:
  """A torch-named state_dict for a tiny Generator, filled with random values."""
  arch = {**TINY, **arch}
  rng = np.random.default_rng(seed)
  shapes = expected_shapes(arch["size"], arch["style_dim"], arch["n_mlp"],
                           channel_max=arch["channel_max"])
  kernel = make_blur_kernel((1, 3, 3, 1)) * 4
  return {k: (kernel if k.endswith("kernel") else
              rng.standard_normal(s).astype(np.float32)) for k, s in shapes.items()}


def test_tiny_shapes_dtypes_finite():
  model = tiny_model()
  params = stylegan2.init_params(model, jax.random.key(0))
  assert model.n_latent == 6 and model.num_layers == 5
  noise = stylegan2.make_noise(jax.random.key(1), 16, batch=3)
  assert [n.shape for n in noise] == [(3, 4, 4, 1), (3, 8, 8, 1), (3, 8, 8, 1),
                                      (3, 16, 16, 1), (3, 16, 16, 1)]
  w = model.apply({"params": params}, jax.random.normal(jax.random.key(2), (3, 32)),
                  method=model.get_latent)
  assert w.shape == (3, 32) and w.dtype == jnp.float32
  img = model.apply({"params": params}, stylegan2.broadcast_to_wplus(w, 16), noise)
  assert img.shape == (3, 16, 16, 3) and img.dtype == jnp.float32
  assert np.all(np.isfinite(img))
  # Noise must matter (noise weights are zero at init, so set them).
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.ones_like(x) if "noise_weight" in jax.tree_util.keystr(p) else x,
      params)
  img_a = model.apply({"params": params}, stylegan2.broadcast_to_wplus(w, 16), noise)
  img_b = model.apply({"params": params}, stylegan2.broadcast_to_wplus(w, 16),
                      [n * 0 for n in noise])
  assert float(jnp.abs(img_a - img_b).max()) > 1e-3


def test_bad_inputs_raise_clear_errors():
  model = tiny_model()
  params = stylegan2.init_params(model, jax.random.key(0))
  noise = stylegan2.make_noise(jax.random.key(1), 16)
  with pytest.raises(ValueError, match=r"W\+ must be \[N, 6"):
    model.apply({"params": params}, jnp.zeros((1, 5, 32)), noise)
  with pytest.raises(ValueError, match="expected 5 noise maps"):
    model.apply({"params": params}, jnp.zeros((1, 6, 32)), noise[:4])
  with pytest.raises(ValueError, match="power of two"):
    stylegan2.num_latents(48)


def test_converter_matches_module_tree():
  model = tiny_model()
  params, noise = convert_generator(tiny_torch_state_dict(), **TINY)
  want = jax.tree_util.tree_map(lambda a: a.shape, stylegan2.abstract_params(model))
  got = jax.tree_util.tree_map(np.shape, params)
  assert got == want
  assert [n.shape for n in noise] == [s for s in stylegan2.noise_shapes(16)]


@pytest.mark.parametrize("size", [4, 8, 32])
def test_any_power_of_two_size(size):
  arch = {**TINY, "size": size}
  model = stylegan2.Generator(**arch)
  params, noise = convert_generator(tiny_torch_state_dict(**arch), **arch)
  assert jax.tree_util.tree_map(np.shape, params) == jax.tree_util.tree_map(
      lambda a: a.shape, stylegan2.abstract_params(model))
  wplus = jax.random.normal(jax.random.key(0), (1, model.n_latent, 32))
  img = jax.jit(lambda p, w, n: model.apply({"params": p}, w, n))(params, wplus, noise)
  assert img.shape == (1, size, size, 3) and np.all(np.isfinite(img))


@pytest.mark.parametrize("mutate, key_in_message", [
    (lambda sd: sd.pop("convs.1.conv.modulation.bias"), "missing (1): convs.1.conv.modulation.bias"),
    (lambda sd: sd.__setitem__("convs.9.conv.weight", np.zeros(3)), "unexpected (1): convs.9.conv.weight"),
    (lambda sd: sd.__setitem__("to_rgbs.0.bias", np.zeros((1, 4, 1, 1))),
     "mis-shaped: to_rgbs.0.bias has shape (1, 4, 1, 1), expected (1, 3, 1, 1)"),
])
def test_converter_strictness_names_the_key(mutate, key_in_message):
  sd = tiny_torch_state_dict()
  mutate(sd)
  with pytest.raises(WeightsMismatchError) as err:
    convert_generator(sd, **TINY)
  assert key_in_message in str(err.value)


def test_converter_rejects_other_fir_kernel():
  sd = tiny_torch_state_dict()
  sd["convs.0.conv.blur.kernel"] = np.full((4, 4), 0.25, np.float32)
  with pytest.raises(WeightsMismatchError, match="convs.0.conv.blur.kernel"):
    convert_generator(sd, **TINY)


def test_vmap_over_per_image_params_equals_loop():
  """Per-image generators (pivotal tuning) batched with vmap == one image at a time."""
  model = tiny_model()
  n = 3
  params = [convert_generator(tiny_torch_state_dict(seed=s), **TINY)[0] for s in range(n)]
  stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *params)
  wplus = jax.random.normal(jax.random.key(0), (n, model.n_latent, 32))
  noise = stylegan2.make_noise(jax.random.key(1), 16, batch=n)

  def one(p, w, nz):  # a single image: w [n_latent, D], noise maps [r, r, 1]
    return model.apply({"params": p}, w[None], [m[None] for m in nz])[0]

  batched = jax.jit(jax.vmap(one))(stacked, wplus, noise)
  loop = np.stack([one(params[i], wplus[i], [m[i] for m in noise]) for i in range(n)])
  np.testing.assert_allclose(batched, loop, rtol=1e-5, atol=1e-5 * np.abs(loop).max())
  assert float(jnp.abs(batched[0] - batched[1]).max()) > 1e-2  # the params differ


def test_batch_with_shared_params_equals_single_images():
  model = tiny_model()
  params = stylegan2.init_params(model, jax.random.key(3))
  wplus = jax.random.normal(jax.random.key(4), (4, model.n_latent, 32))
  noise = stylegan2.make_noise(jax.random.key(5), 16, batch=4)
  apply = jax.jit(lambda w, nz: model.apply({"params": params}, w, nz))
  batch = apply(wplus, noise)
  for i in range(4):
    single = model.apply({"params": params}, wplus[i:i + 1], [m[i:i + 1] for m in noise])
    np.testing.assert_allclose(batch[i:i + 1], single, rtol=1e-5, atol=1e-6)


def test_jit_compiles_once_for_repeated_calls():
  model = tiny_model()
  params = stylegan2.init_params(model, jax.random.key(0))
  traces = []

  @jax.jit
  def synth(p, w, nz):
    traces.append(1)  # runs only while tracing
    return model.apply({"params": p}, w, nz)

  for seed in range(4):
    wplus = jax.random.normal(jax.random.key(seed), (2, model.n_latent, 32))
    noise = stylegan2.make_noise(jax.random.key(seed), 16, batch=2)
    synth(params, wplus, noise).block_until_ready()
  assert len(traces) == 1


def test_bfloat16_compute_close_to_float32():
  """bf16 convolutions: measurably different from fp32, but close (modulation in fp32)."""
  model32, model16 = tiny_model(), tiny_model(dtype=jnp.bfloat16)
  params = stylegan2.init_params(model32, jax.random.key(0))
  wplus = jax.random.normal(jax.random.key(1), (2, model32.n_latent, 32))
  noise = stylegan2.make_noise(jax.random.key(2), 16, batch=2)
  img32 = model32.apply({"params": params}, wplus, noise)
  img16 = model16.apply({"params": params}, wplus, noise)
  assert img16.dtype == jnp.float32
  scaled = float(jnp.abs(img16 - img32).max() / jnp.abs(img32).max())
  assert 1e-5 < scaled < 5e-2, scaled


def test_truncation_and_mean_latent():
  model = tiny_model()
  params = stylegan2.init_params(model, jax.random.key(0))
  w_avg = stylegan2.mean_latent(model, params, jax.random.key(1), n=256)
  w = model.apply({"params": params}, jax.random.normal(jax.random.key(2), (5, 32)),
                  method=model.get_latent)
  np.testing.assert_allclose(stylegan2.truncate(w, w_avg, 1.0), w, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(stylegan2.truncate(w, w_avg, 0.0),
                             jnp.broadcast_to(w_avg, w.shape), rtol=1e-6, atol=1e-6)
  half = stylegan2.truncate(w, w_avg, 0.5)
  np.testing.assert_allclose(half - w_avg, 0.5 * (w - w_avg), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("upsample_impl", ["subpixel", "phases", "taps"])
def test_upsampling_impls_are_the_same_function(upsample_impl):
  """upsample_impl='subpixel' (one 3x3 conv over 4 phases, blur folded in), 'phases'
  (one 2x2 conv over the transposed conv's 4 phases, then the blur as shifted slices) and
  'taps' (one matrix product onto the 9 taps, each placed at its stride-2 positions, then
  the blur) ==
  the torch-shaped path (lhs-dilated transposed conv, then the FIR blur), values and
  grads."""
  kw = dict(style_dim=32, n_mlp=2, channel_max=16)
  dilated = stylegan2.Generator(32, **kw)
  subpixel = stylegan2.Generator(32, upsample_impl=upsample_impl, **kw)
  params = stylegan2.init_params(dilated, jax.random.key(0))
  params = jax.tree_util.tree_map_with_path(  # non-zero noise weights and biases
      lambda p, x: x + 0.3 if "bias" in jax.tree_util.keystr(p) or "noise_weight" in
      jax.tree_util.keystr(p) else x, params)
  w = jax.random.normal(jax.random.key(1), (2, dilated.n_latent, 32))
  noise = stylegan2.make_noise(jax.random.key(2), 32, 2)

  def loss(model, p):
    return jnp.sum(jnp.square(model.apply({"params": p}, w, noise)))

  a = dilated.apply({"params": params}, w, noise)
  b = subpixel.apply({"params": params}, w, noise)
  np.testing.assert_allclose(b, a, atol=1e-5 * float(jnp.abs(a).max()))
  ga = jax.grad(lambda p: loss(dilated, p))(params)
  gb = jax.grad(lambda p: loss(subpixel, p))(params)
  for x, y in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
    np.testing.assert_allclose(y, x, atol=1e-4 * float(jnp.abs(x).max()) + 1e-7)
  with pytest.raises(ValueError, match="upsample_impl"):
    stylegan2.Generator(32, upsample_impl="nearest", **kw).apply({"params": params}, w, noise)


def _per_image_grads(model, per_image, w, noise):
  """d sum(image^2) / d params for each image's own parameter copy (the tuning layout)."""
  def one(p, wi, ni):
    return jnp.sum(jnp.square(model.apply({"params": p}, wi[None], [m[None] for m in ni])))
  return jax.jit(jax.vmap(jax.grad(one)))(per_image, w, noise)


def _tiny_per_image_setup(batch):
  kw = dict(style_dim=32, n_mlp=2, channel_max=16)
  params = stylegan2.init_params(stylegan2.Generator(16, **kw), jax.random.key(0))
  per_image = jax.tree_util.tree_map(
      lambda x: x + 0.05 * jax.random.normal(jax.random.key(3), (batch,) + x.shape), params)
  w = jax.random.normal(jax.random.key(1), (batch, stylegan2.num_latents(16), 32))
  return kw, params, per_image, w, stylegan2.make_noise(jax.random.key(2), 16, batch)


@pytest.mark.parametrize("conv_impl", ["grouped", "tapwise", "im2col", "hybrid"])
@pytest.mark.parametrize("upsample_impl", ["subpixel", "phases"])
def test_conv_impls_are_the_same_function(conv_impl, upsample_impl, monkeypatch):
  """conv_impl 'grouped' / 'tapwise' / 'im2col' / 'hybrid' (other formulations of the conv
  and its weight gradient) == XLA's conv autodiff: values and per-image parameter
  gradients under vmap (the pivotal-tuning layout), with sub-pixel or phase-split
  upsampling, which route every generator conv through layers.conv2d (the only place
  conv_impl acts: 3x3 'same', 2x2 padded by one and 1x1 kernels); 'hybrid' with its
  threshold at 64 outputs, so that this 16-channel generator's upsampling convs take
  im2col and the others grouped; an unknown conv_impl is refused."""
  monkeypatch.setattr(layers, "IM2COL_MIN_OUT_CHANNELS", 64)
  kw, params, per_image, w, noise = _tiny_per_image_setup(2)
  xla = stylegan2.Generator(16, upsample_impl=upsample_impl, **kw)
  other = stylegan2.Generator(16, upsample_impl=upsample_impl, conv_impl=conv_impl, **kw)
  a = xla.apply({"params": params}, w, noise)
  np.testing.assert_allclose(other.apply({"params": params}, w, noise), a,
                             atol=1e-6 * float(jnp.abs(a).max()))
  for x, y in zip(jax.tree_util.tree_leaves(_per_image_grads(xla, per_image, w, noise)),
                  jax.tree_util.tree_leaves(_per_image_grads(other, per_image, w, noise))):
    np.testing.assert_allclose(y, x, atol=1e-5 * float(jnp.abs(x).max()) + 1e-7)
  with pytest.raises(ValueError, match="conv_impl"):
    stylegan2.Generator(16, conv_impl="fft", **kw).apply({"params": params}, w, noise)


def _weight_grad_convs(model, per_image, w, noise) -> list[str]:
  """The HLO lines of the per-image gradient's weight-gradient convolutions: those with the
  activations' channels as batch and the output-gradient map as kernel (dim_labels
  f01b_i01o->01bf, the form of JAX's conv transpose)."""
  def one(p, wi, ni):
    return jnp.sum(jnp.square(model.apply({"params": p}, wi[None], [m[None] for m in ni])))
  hlo = jax.jit(jax.vmap(jax.grad(one))).lower(per_image, w, noise).as_text(dialect="hlo")
  return [line for line in hlo.splitlines()
          if " convolution(" in line and "dim_labels=f01b_i01o->01bf" in line]


@pytest.mark.parametrize("upsample_impl", ["subpixel", "phases"])
def test_grouped_weight_gradients_are_batch_grouped_convolutions(upsample_impl):
  """Under vmap over 3 per-image weight copies, conv_impl='grouped' forms every stride-1
  weight gradient as ONE convolution with batch_group_count=3 (XLA's GPU backend runs that
  as cuDNN's grouped backward-filter convolution), where JAX's own batching gives
  feature_group_count=3 (which that backend can only run as a forward convolution with a
  feature-map-sized kernel). Its 1x1 convs (to_rgb) are matrix products instead, with no
  convolution at all."""
  kw, _, per_image, w, noise = _tiny_per_image_setup(3)
  xla = _weight_grad_convs(stylegan2.Generator(16, upsample_impl=upsample_impl, **kw),
                           per_image, w, noise)
  grouped = _weight_grad_convs(stylegan2.Generator(16, upsample_impl=upsample_impl,
                                                   conv_impl="grouped", **kw),
                               per_image, w, noise)
  assert xla and all("feature_group_count=3" in c for c in xla)
  to_rgb_layers = stylegan2.log2_size(16) - 1
  assert len(grouped) == len(xla) - to_rgb_layers
  assert all("batch_group_count=3" in c and "feature_group_count" not in c for c in grouped)


def _vmapped_conv_grad_hlo(impl: str, out_channels: int) -> str:
  """HLO of one 3x3 conv's input and weight gradients under vmap over 3 images' weights."""
  def loss(x, w):
    return jnp.sum(jnp.square(layers.conv2d(x[None], w, impl=impl)))
  x = jnp.ones((3, 8, 8, 4))
  w = jnp.ones((3, 3, 3, 4, out_channels))
  return jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)))).lower(x, w).as_text(dialect="hlo")


def test_im2col_convs_are_matrix_products():
  """conv_impl='im2col': under vmap over per-image weights, the conv's output and weight
  gradient are batched matrix products (dot), the input gradient the only convolution
  (no grouped forward or backward-filter convolutions); 'hybrid' takes that form from
  IM2COL_MIN_OUT_CHANNELS outputs on and the batch-grouped one below."""
  def convs(hlo):
    return [line for line in hlo.splitlines() if " convolution(" in line]
  im2col = _vmapped_conv_grad_hlo("im2col", 8)
  assert len(convs(im2col)) == 1 and " dot(" in im2col
  assert "batch_group_count" not in im2col
  wide = _vmapped_conv_grad_hlo("hybrid", layers.IM2COL_MIN_OUT_CHANNELS)
  assert len(convs(wide)) == 1 and " dot(" in wide
  narrow = _vmapped_conv_grad_hlo("hybrid", layers.IM2COL_MIN_OUT_CHANNELS - 1)
  assert any("batch_group_count=3" in line for line in convs(narrow))


def test_upsampling_kernels_are_built_without_matrix_products():
  """The per-image sub-pixel and phase kernels are built by shifted and sliced copies of
  the weight (one elementwise fusion), not by a contraction with a constant tap map, which
  XLA's GPU backend ran as a float32 matrix product per image (H200 profile, README)."""
  blur = make_blur_kernel((1, 3, 3, 1)) * 4
  w = jnp.ones((3, 3, 3, 4, 5))
  for build in (lambda v: layers.subpixel_upsample_kernel(v, blur),
                layers.transposed_phase_kernel):
    hlo = jax.jit(jax.vmap(jax.grad(lambda v: jnp.sum(jnp.square(build(v)))))).lower(
        w).as_text(dialect="hlo")
    assert " dot(" not in hlo and " convolution(" not in hlo


@pytest.mark.parametrize("out_dtype,dtype", [(jnp.float32, jnp.float32),
                                             (jnp.bfloat16, jnp.bfloat16),
                                             (jnp.float32, jnp.bfloat16),
                                             (jnp.float64, jnp.float64)])
def test_styled_conv_epilogue_vjp_is_autodiffs(out_dtype, dtype):
  """layers.noise_bias_leaky_relu (custom VJP that keeps only its result) == JAX's
  autodiff of fused_leaky_relu(out + noise_weight * noise, bias): the result and the
  gradients of out (in out's dtype), of a per-image noise map, the noise strength and
  the bias, with zeros and both signs in the pre-activation; float64 throughout with x64
  (the golden float64 parity runs)."""
  with jax.enable_x64(out_dtype == jnp.float64):
    _check_epilogue_vjp(out_dtype, dtype)


def _check_epilogue_vjp(out_dtype, dtype):
  keys = jax.random.split(jax.random.key(0), 4)
  out = jax.random.normal(keys[0], (2, 5, 5, 4), out_dtype).at[0, 0, 0].set(0.0)
  params = jnp.float64 if out_dtype == jnp.float64 else jnp.float32
  noise = jax.random.normal(keys[1], (2, 5, 5, 1), params).at[0, 0, 0].set(0.0)
  args = (out, noise, jnp.array([0.3], params),
          jax.random.normal(keys[2], (4,), params).at[0].set(0.0))
  dy = jax.random.normal(keys[3], (2, 5, 5, 4)).astype(dtype)

  def autodiff(o, n, w, b):
    return layers.fused_leaky_relu(o + w * n, b).astype(dtype)
  y_ref, vjp_ref = jax.vjp(autodiff, *args)
  y, vjp = jax.vjp(lambda *a: layers.noise_bias_leaky_relu(*a, dtype), *args)
  assert y.dtype == dtype
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
  for got, want in zip(vjp(dy), vjp_ref(dy)):
    assert got.dtype == want.dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_few_output_1x1_conv_gradients_are_autodiffs(dtype):
  """A 1x1 conv with 3 outputs (to_rgb) under conv_impl='grouped' (a matrix product whose
  input gradient is a custom elementwise sum of 3 products) == XLA's conv and its
  autodiff: value and both gradients, per image under vmap, in the operands' dtypes; the
  input gradient's HLO is elementwise (no dot or convolution for it)."""
  keys = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(keys[0], (2, 1, 6, 6, 5)).astype(dtype)
  w = jax.random.normal(keys[1], (2, 1, 1, 5, 3)).astype(dtype)
  dy = jax.random.normal(keys[2], (2, 1, 6, 6, 3)).astype(dtype)

  def value_and_grads(impl):
    def one(xi, wi, dyi):
      y, vjp = jax.vjp(lambda a, b: layers.conv2d(a, b, impl=impl), xi, wi)
      return (y,) + vjp(dyi)
    return jax.vmap(one)(x, w, dy)
  tol = 1e-6 if dtype == jnp.float32 else 2e-2
  for got, want in zip(value_and_grads("grouped"), value_and_grads("xla")):
    assert got.dtype == want.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               rtol=tol, atol=tol * float(jnp.abs(want.astype(jnp.float32)).max()))

  def input_grad(xi, wi):
    return jax.grad(lambda a: jnp.sum(layers.conv2d(a, wi, impl="grouped") ** 2))(xi)
  hlo = jax.jit(jax.vmap(input_grad)).lower(x, w).as_text(dialect="hlo")
  assert hlo.count(" dot(") == 1 and " convolution(" not in hlo    # the forward's product


def test_taps_upsampling_is_matrix_products_per_image():
  """upsample_impl='taps' under vmap over per-image parameters (the tuning layout): the
  same per-image gradients as the torch-shaped generator, and the transposed conv with
  its input and weight gradients is batched matrix products (dot) and slices, with no
  convolution."""
  kw, _, per_image, w, noise = _tiny_per_image_setup(2)
  dilated = _per_image_grads(stylegan2.Generator(16, **kw), per_image, w, noise)
  taps = _per_image_grads(stylegan2.Generator(16, upsample_impl="taps", conv_impl="grouped",
                                              modulation="auto", **kw), per_image, w, noise)
  for x, y in zip(jax.tree_util.tree_leaves(dilated), jax.tree_util.tree_leaves(taps)):
    np.testing.assert_allclose(y, x, atol=1e-5 * float(jnp.abs(x).max()) + 1e-7)

  def loss(x, v):
    return jnp.sum(jnp.square(layers.transposed_conv_taps(x[None], v, None)))
  hlo = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)))).lower(
      jnp.ones((3, 8, 8, 4)), jnp.ones((3, 3, 3, 4, 5))).as_text(dialect="hlo")
  assert " dot(" in hlo and " convolution(" not in hlo


def test_weight_modulation_is_the_same_function():
  """modulation='weights' (the official fused form: one modulated, demodulated weight per
  sample) and 'auto' (fused at 16x16 in this 16-channel generator, not at 4x4) == the
  default 'activations' form: a batch of 2 through shared weights (both upsampling paths),
  and per-image parameter gradients under vmap (the tuning layout, with
  batch-grouped weight gradients); an unknown modulation is refused."""
  kw, params, per_image, w, noise = _tiny_per_image_setup(2)
  for upsample, modulation in itertools.product(("dilated", "subpixel", "phases", "taps"),
                                                ("weights", "auto")):
    a = stylegan2.Generator(16, upsample_impl=upsample, **kw).apply({"params": params}, w,
                                                                     noise)
    b = stylegan2.Generator(16, upsample_impl=upsample, modulation=modulation, **kw).apply(
        {"params": params}, w, noise)
    np.testing.assert_allclose(b, a, atol=1e-6 * float(jnp.abs(a).max()))
  base = stylegan2.Generator(16, upsample_impl="subpixel", **kw)
  fused = stylegan2.Generator(16, upsample_impl="subpixel", conv_impl="grouped",
                              modulation="weights", **kw)
  for x, y in zip(jax.tree_util.tree_leaves(_per_image_grads(base, per_image, w, noise)),
                  jax.tree_util.tree_leaves(_per_image_grads(fused, per_image, w, noise))):
    np.testing.assert_allclose(y, x, atol=1e-5 * float(jnp.abs(x).max()) + 1e-7)
  with pytest.raises(ValueError, match="modulation"):
    stylegan2.Generator(16, modulation="both", **kw).apply({"params": params}, w, noise)
