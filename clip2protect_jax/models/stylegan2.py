"""StyleGAN2 generator in Flax, compatible with rosinality's PyTorch port.

The official CLIP2Protect code uses `Generator(size=1024, style_dim=512, n_mlp=8,
channel_multiplier=2, blur_kernel=[1,3,3,1], lr_mlp=0.01)`; `convert/stylegan2.py`
converts its `g_ema` state_dict. Layout: NHWC, images in [-1, 1] for a trained generator
(the raw ToRGB sum: no tanh, no clamp).

Inputs are explicit: W+ codes [N, n_latent, style_dim] and a list of `num_layers` noise
maps, map i of shape [N or 1, r_i, r_i, 1] (see `noise_shapes`). The module holds no
state, so `jax.vmap` over PER-IMAGE params works (pivotal tuning) and so does `jax.jit`
with the module as a static closure.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip2protect_jax.models.layers import EqualLinear, StyledConv, ToRGB

Array = jax.Array


def channels_at(resolution: int, channel_multiplier: int = 2, channel_max: int = 512) -> int:
  """Feature channels of the block at `resolution`: rosinality's table, capped at channel_max.

  channel_max=512 (the default) is rosinality's architecture; smaller caps exist only to
  make tiny test generators (e.g. 16 channels everywhere).
  """
  table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32,
           1024: 16, 2048: 8}
  base = table[resolution]
  return min(base if resolution <= 32 else base * channel_multiplier, channel_max)


def log2_size(size: int) -> int:
  log = int(round(math.log2(size)))
  if size < 4 or 2 ** log != size:
    raise ValueError(f"generator size must be a power of two >= 4, got {size}")
  return log


def num_latents(size: int) -> int:
  """Rows of the W+ code: 18 at 1024, 14 at 256."""
  return 2 * log2_size(size) - 2


def num_noise_maps(size: int) -> int:
  """Noise maps: 17 at 1024, 13 at 256."""
  return 2 * (log2_size(size) - 2) + 1


def noise_shapes(size: int, batch: int = 1) -> list[tuple[int, int, int, int]]:
  """NHWC shapes of the noise maps: 4, 8, 8, 16, 16, ... up to `size`."""
  return [(batch, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), 1)
          for i in range(num_noise_maps(size))]


def make_noise(key: Array, size: int, batch: int = 1) -> list[Array]:
  """Noise maps drawn from N(0, 1), one independent set per image: [batch, r, r, 1] each."""
  keys = jax.random.split(key, num_noise_maps(size))
  return [jax.random.normal(k, s) for k, s in zip(keys, noise_shapes(size, batch))]


class MappingNetwork(nn.Module):
  """z [N, style_dim] -> w [N, style_dim]: PixelNorm then n_mlp EqualLinear + fused lrelu."""
  style_dim: int = 512
  n_mlp: int = 8
  lr_mlp: float = 0.01
  precision: Any = None

  @nn.compact
  def __call__(self, z: Array) -> Array:
    x = z * jax.lax.rsqrt(jnp.mean(jnp.square(z), axis=-1, keepdims=True) + 1e-8)
    for i in range(1, self.n_mlp + 1):   # named after torch's style.{i} (style.0 = PixelNorm)
      x = EqualLinear(self.style_dim, lr_mul=self.lr_mlp, activation=True,
                      precision=self.precision, name=f"dense_{i}")(x)
    return x


class Synthesis(nn.Module):
  """W+ [N, n_latent, style_dim] + noise maps -> image [N, size, size, 3]."""
  size: int
  channel_multiplier: int = 2
  channel_max: int = 512
  blur_kernel: Sequence[int] = (1, 3, 3, 1)
  dtype: Any = jnp.float32
  precision: Any = None
  upsample_impl: str = "dilated"
  conv_impl: str = "xla"
  modulation: str = "activations"

  @nn.compact
  def __call__(self, wplus: Array, noise: Sequence[Array]) -> Array:
    n_latent, n_noise = num_latents(self.size), num_noise_maps(self.size)
    if wplus.ndim != 3 or wplus.shape[1] != n_latent:
      raise ValueError(f"W+ must be [N, {n_latent}, style_dim] for size {self.size}, "
                       f"got {wplus.shape}")
    if len(noise) != n_noise:
      raise ValueError(f"expected {n_noise} noise maps for size {self.size}, got {len(noise)}")
    ch_at = lambda r: channels_at(r, self.channel_multiplier, self.channel_max)
    kw = dict(blur_kernel=self.blur_kernel, dtype=self.dtype, precision=self.precision,
              conv_impl=self.conv_impl, modulation=self.modulation)
    const = self.param("input", nn.initializers.normal(1.0), (4, 4, ch_at(4)))
    x = jnp.broadcast_to(const, (wplus.shape[0],) + const.shape)
    x = StyledConv(ch_at(4), name="conv1", **kw)(x, wplus[:, 0], noise[0])
    skip = ToRGB(name="to_rgb1", **kw)(x, wplus[:, 1], None)
    row = 1
    for block in range(log2_size(self.size) - 2):           # resolutions 8 .. size
      ch = ch_at(2 ** (block + 3))
      x = StyledConv(ch, upsample=True, upsample_impl=self.upsample_impl,
                     name=f"convs_{2 * block}", **kw)(
          x, wplus[:, row], noise[2 * block + 1])
      x = StyledConv(ch, name=f"convs_{2 * block + 1}", **kw)(
          x, wplus[:, row + 1], noise[2 * block + 2])
      skip = ToRGB(name=f"to_rgbs_{block}", **kw)(x, wplus[:, row + 2], skip)
      row += 2
    return skip


class Generator(nn.Module):
  """rosinality `Generator` (config-f at 1024): mapping + synthesis.

  `__call__(wplus, noise)` is the synthesis (what CLIP2Protect optimises through);
  `get_latent(z)` the mapping network. Params: {'style': ..., 'synthesis': ...}.
  """
  size: int
  style_dim: int = 512
  n_mlp: int = 8
  channel_multiplier: int = 2
  channel_max: int = 512             # 512 = rosinality; smaller only for tiny test models
  blur_kernel: Sequence[int] = (1, 3, 3, 1)
  lr_mlp: float = 0.01
  dtype: Any = jnp.float32           # convs and maps between layers; modulation, noise,
                                     # bias, activation math and the image stay float32
  precision: Any = None              # lax precision for convs/matmuls (None = default)
  upsample_impl: str = "dilated"     # "subpixel" | "phases" | "taps": same function,
                                     # see ModulatedConv2d
  conv_impl: str = "xla"             # "grouped" | "hybrid" | ...: same function, layers.conv2d
  modulation: str = "activations"    # "weights" | "auto": same function, see ModulatedConv2d

  def setup(self):
    self.style = MappingNetwork(self.style_dim, self.n_mlp, self.lr_mlp, self.precision)
    self.synthesis = Synthesis(self.size, self.channel_multiplier, self.channel_max,
                               tuple(self.blur_kernel), self.dtype, self.precision,
                               self.upsample_impl, self.conv_impl, self.modulation)

  @property
  def n_latent(self) -> int:
    return num_latents(self.size)

  @property
  def num_layers(self) -> int:
    return num_noise_maps(self.size)

  def get_latent(self, z: Array) -> Array:
    """z [N, style_dim] ~ N(0, 1) -> w [N, style_dim]."""
    return self.style(z)

  def __call__(self, wplus: Array, noise: Sequence[Array]) -> Array:
    """W+ [N, n_latent, style_dim], noise maps [N|1, r, r, 1] -> image [N, size, size, 3]."""
    return self.synthesis(wplus, noise)

  def init_all(self, z: Array, wplus: Array, noise: Sequence[Array]) -> Array:
    """Touches both sub-networks; used only by `init_params`."""
    return self.get_latent(z).sum() + self(wplus, noise).sum()


def synthesis_layer_resolution(name: str) -> int:
  """Output resolution in px of the Synthesis child `name`: 'input', 'conv1', 'to_rgb1' (4),
  'convs_{i}' (2 ** (i // 2 + 3)) or 'to_rgbs_{i}' (2 ** (i + 3))."""
  if name in ("input", "conv1", "to_rgb1"):
    return 4
  kind, _, index = name.rpartition("_")
  if kind in ("convs", "to_rgbs") and index.isdigit():
    return 2 ** (int(index) // (2 if kind == "convs" else 1) + 3)
  raise ValueError(f"not a Synthesis layer: {name!r}")


def init_params(model: Generator, key: Array) -> dict[str, Any]:
  """Fresh params (the official constructor's init) for `model`: {'style', 'synthesis'}."""
  return _jitted_init(model)(key)


@functools.lru_cache(maxsize=8)
def _jitted_init(model: Generator):
  """key -> init_params(model, key), jitted once per architecture (an equal Generator hits
  the cache: a job that loads its models again traces and compiles nothing)."""
  def init(key):
    z = jnp.zeros((1, model.style_dim))
    wplus = jnp.zeros((1, num_latents(model.size), model.style_dim))
    noise = [jnp.zeros(s) for s in noise_shapes(model.size)]
    return model.init(key, z, wplus, noise, method=Generator.init_all)["params"]
  return jax.jit(init)


def abstract_params(model: Generator) -> Any:
  """ShapeDtypeStruct tree of the params, without allocating them."""
  return jax.eval_shape(lambda: init_params(model, jax.random.key(0)))


def mean_latent(model: Generator, params: Any, key: Array, n: int = 4096) -> Array:
  """Average w over `n` random z (rosinality's `mean_latent`): [style_dim]."""
  z = jax.random.normal(key, (n, model.style_dim))
  w = model.apply({"params": params}, z, method=Generator.get_latent)
  return w.mean(axis=0)


def truncate(w: Array, w_avg: Array, psi: float) -> Array:
  """Truncation trick: w_avg + psi * (w - w_avg); psi = 1 leaves w unchanged."""
  return w_avg + psi * (w - w_avg)


def broadcast_to_wplus(w: Array, size: int) -> Array:
  """w [N, style_dim] -> W+ [N, n_latent, style_dim] (the same code in every row)."""
  return jnp.repeat(w[:, None, :], num_latents(size), axis=1)
