"""StyleGAN2 building blocks, compatible with rosinality's PyTorch port.

Parameters are stored RAW, as in the PyTorch port (equalized learning rate: the weight is
N(0, 1) / lr_mul and the layer multiplies it by lr_mul / sqrt(fan_in) at run time), so
optimising them (pivotal tuning) follows the same dynamics as the official code.
Layout: NHWC activations, HWIO conv weights, (in, out) dense weights.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_SQRT2 = math.sqrt(2.0)


def make_blur_kernel(taps: Sequence[float]) -> np.ndarray:
  """Separable FIR taps -> normalised 2-D kernel (sum 1), e.g. [1,3,3,1] -> 4x4."""
  k = np.asarray(taps, np.float64)
  k2 = np.outer(k, k) if k.ndim == 1 else k
  return (k2 / k2.sum()).astype(np.float32)


def fused_leaky_relu(x: Array, bias: Array) -> Array:
  """leaky_relu(x + bias, 0.2) * sqrt(2); `bias` broadcasts over the last (channel) axis."""
  return jax.nn.leaky_relu(x + bias.astype(x.dtype), 0.2) * _SQRT2


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def noise_bias_leaky_relu(out: Array, noise: Array, noise_weight: Array, bias: Array,
                          dtype: Any) -> Array:
  """StyledConv's epilogue: fused_leaky_relu(out + noise_weight * noise, bias) computed in
  float32 (or float64), returned in `dtype`; out [N, H, W, C], noise broadcastable to
  [N, H, W, 1], noise_weight (1,), bias (C,). Its VJP keeps only the result (the
  activation's slope is read off its sign, which leaky ReLU keeps), so no float32
  pre-activation map is stored for the backward pass (XLA's autodiff stored one per layer:
  in the H200 plan of the bf16 tuning step, a float32 map written once and read twice at
  each upsampling layer), and forms both parameter gradients in one pass (see below)."""
  return _noise_bias_leaky_relu_forward(out, noise, noise_weight, bias, dtype)[0]


def _noise_bias_leaky_relu_forward(out, noise, noise_weight, bias, dtype):
  y = fused_leaky_relu(out + noise_weight * noise, bias).astype(dtype)
  return y, (y, jnp.zeros((), out.dtype), noise, noise_weight, bias)


def _noise_bias_leaky_relu_backward(dtype, residuals, dy):
  y, out_zero, noise, noise_weight, bias = residuals
  # The forward's arithmetic type (float32, or float64 with x64); jax.nn.leaky_relu's slope
  # is 1 where its input is >= 0, i.e. where y >= 0.
  compute = jnp.result_type(out_zero, noise, noise_weight)
  d_pre = dy.astype(compute) * jnp.where(y >= 0, _SQRT2, 0.2 * _SQRT2).astype(compute)
  # Both parameter gradients as ONE reduction over the pixels to one value per channel (a
  # variadic reduce, which XLA does not reorder), computed in the pass that writes d_pre;
  # autodiff summed the noise strength's over the channels first: a second pass over the
  # output gradient, with a stored mask map.
  zero = jnp.zeros((), compute)
  d_bias, d_noise_weight = jax.lax.reduce(
      (d_pre, d_pre * noise), (zero, zero), lambda a, b: (a[0] + b[0], a[1] + b[1]),
      tuple(range(y.ndim - 1)))
  d_noise_weight = jnp.sum(d_noise_weight)
  _, noise_pullback = jax.vjp(lambda n: jnp.broadcast_to(noise_weight * n, y.shape), noise)
  return (d_pre.astype(out_zero.dtype), *noise_pullback(d_pre),
          d_noise_weight.reshape(noise_weight.shape).astype(noise_weight.dtype),
          d_bias.reshape(bias.shape).astype(bias.dtype))


noise_bias_leaky_relu.defvjp(_noise_bias_leaky_relu_forward, _noise_bias_leaky_relu_backward)


def upfirdn2d(x: Array, kernel: np.ndarray, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> Array:
  """Upsample (zero insertion), pad, FIR-filter, downsample; NHWC, per channel.

  Same semantics as rosinality's `upfirdn2d_native` with pad=(pad0, pad1) on both axes
  (negative pads crop). `kernel` is a constant numpy 2-D array, applied as a true
  convolution (flipped), depthwise.
  """
  c = x.shape[-1]
  p0, p1 = pad
  flipped = np.ascontiguousarray(kernel[::-1, ::-1])
  # Depthwise conv: HWIO with I=1 per group, O=C, feature_group_count=C.
  k = jnp.asarray(np.tile(flipped[:, :, None, None], (1, 1, 1, c)), x.dtype)
  # upfirdn2d_native zero-inserts to h*up samples (the last up-1 are zeros) and then
  # pads; lhs_dilation gives (h-1)*up+1 samples, so the high-side pad gets up-1 more.
  hi = p1 + up - 1
  out = jax.lax.conv_general_dilated(
      x, k, window_strides=(down, down),
      padding=((p0, hi), (p0, hi)),
      lhs_dilation=(up, up),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=c)
  return out


UPSAMPLE_IMPLS = ("dilated", "subpixel", "phases", "taps")
MODULATIONS = ("activations", "weights", "auto")
CONV_IMPLS = ("xla", "grouped", "tapwise", "im2col", "hybrid")
# "hybrid": conv_im2col for kernels with at least this many output channels, else grouped.
IM2COL_MIN_OUT_CHANNELS = 128
_NHWC = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], tuple[int, int]]


def same_padding(k: int) -> Padding:
  """The zero padding of a stride-1 'same' conv with an odd k x k kernel."""
  return ((k // 2, k // 2), (k // 2, k // 2))


def _conv_xla(x: Array, w: Array, precision: Any, padding: Padding) -> Array:
  """Stride-1 conv with zero `padding`, output in x's dtype (accumulated in float32 by
  cuDNN and XLA's CPU convolutions). Half precision in, half out: a float32 output
  (preferred_element_type) is a mixed-type conv that XLA's GPU backend runs by converting
  the inputs to float32, i.e. a float32 conv with float32 maps in memory."""
  return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC,
                                      precision=precision)


def _conv_input_grad(dy: Array, x: Array, w: Array, precision: Any, padding: Padding
                     ) -> Array:
  """The input gradient of _conv_xla(x, w) for the output gradient dy (XLA's own conv)."""
  return jax.linear_transpose(lambda v: _conv_xla(v, w, precision, padding), x)(dy)[0]


def _with_weight_grad(weight_grad: Callable[[Array, Array, tuple, Padding, Any], Array]
                      ) -> Callable:
  """_conv_xla (x [N, H, W, I], w [kh, kw, I, O] -> [N, H', W', O]) with its weight
  gradient computed by weight_grad(x, dy, (kh, kw), padding, precision) -> [kh, kw, I, O];
  the input gradient stays XLA's."""
  @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
  def conv(x, w, precision, padding):
    return _conv_xla(x, w, precision, padding)

  def fwd(x, w, precision, padding):
    return _conv_xla(x, w, precision, padding), (x, w)

  def bwd(precision, padding, residuals, dy):
    x, w = residuals
    dy = dy.astype(x.dtype)
    dw = weight_grad(x, dy, w.shape[:2], padding, precision)
    return _conv_input_grad(dy, x, w, precision, padding), dw.astype(w.dtype)

  conv.defvjp(fwd, bwd)
  return conv


def _tapwise_weight_grad(x: Array, dy: Array, kernel_shape: tuple, padding: Padding,
                         precision: Any) -> Array:
  """dw[a, b] = sum_{n,h,w} x_pad[n, h + a, w + b, :]^T dy[n, h, w, :], one contraction over
  the pixels per kernel tap (under vmap: kh*kw batched matrix products)."""
  taps = [jnp.einsum("nhwi,nhwo->io", tap, dy, precision=precision,
                     preferred_element_type=jnp.float32)
          for tap in _input_taps(x, kernel_shape, padding)]
  return jnp.stack(taps).reshape(tuple(kernel_shape) + taps[0].shape)


def _input_taps(x: Array, kernel_shape: tuple, padding: Padding) -> list[Array]:
  """x [N, H, W, I] -> the kh*kw shifted windows [N, H', W', I] of the zero-padded input
  that meet the kernel's taps (a, b), tap-major: window (a, b) is x_pad[:, a:a + H',
  b:b + W']."""
  xp = jnp.pad(x, ((0, 0),) + padding + ((0, 0),))
  h, wd = xp.shape[1] - kernel_shape[0] + 1, xp.shape[2] - kernel_shape[1] + 1
  return [xp[:, a:a + h, b:b + wd] for a in range(kernel_shape[0])
          for b in range(kernel_shape[1])]


def _im2col(x: Array, kernel_shape: tuple, padding: Padding) -> Array:
  """x [N, H, W, I] -> cols [N, H', W', kh*kw*I]: the input taps side by side, so that the
  stride-1 conv is cols @ w.reshape(-1, O)."""
  return jnp.concatenate(_input_taps(x, kernel_shape, padding), axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_im2col(x: Array, w: Array, precision: Any, padding: Padding) -> Array:
  """_conv_xla's function (x [N, H, W, I], w [kh, kw, I, O]) as matrix products over an
  im2col copy of x: the output cols @ w and the weight gradient cols^T dy (under vmap over
  per-image weights, one batched matrix product each, instead of cuDNN's grouped
  convolutions, which loop over the images); the input gradient stays XLA's conv. Costs
  writing cols (kh*kw times x) once and reading it twice."""
  return _im2col_forward(x, w, precision, padding)[0]


def _im2col_forward(x, w, precision, padding):
  cols = _im2col(x, w.shape[:2], padding)
  y = jnp.einsum("nhwk,ko->nhwo", cols, w.reshape(-1, w.shape[3]),
                 precision=precision, preferred_element_type=jnp.float32)
  return y.astype(x.dtype), (cols, x, w)


def _im2col_backward(precision, padding, residuals, dy):
  cols, x, w = residuals
  dy = dy.astype(x.dtype)
  dw = jnp.einsum("nhwk,nhwo->ko", cols, dy, precision=precision,
                  preferred_element_type=jnp.float32)
  return _conv_input_grad(dy, x, w, precision, padding), dw.reshape(w.shape).astype(w.dtype)


conv_im2col.defvjp(_im2col_forward, _im2col_backward)


def _backward_filter_conv(x: Array, dy: Array, padding: Padding, precision: Any,
                          groups: int = 1) -> Array:
  """The weight gradient of a stride-1 conv with zero `padding` as ONE convolution in XLA's
  backward-filter form: x [N, H, W, G*I] (the pixels' channels as its batch), dy
  [N, H', W', G*O] (the kernel) -> [kh, kw, I, G*O] in x's dtype, group g pairing x's
  channels g*I.. with dy's g*O.. through batch_group_count = G, the form that XLA's GPU
  backend runs as cuDNN's (grouped) backward-filter convolution."""
  return jax.lax.conv_general_dilated(
      x, dy, (1, 1), padding, dimension_numbers=("CHWN", "IHWO", "HWNC"),
      batch_group_count=groups, precision=precision)


@functools.lru_cache(maxsize=None)
def _grouped_weight_grad(padding: Padding, precision: Any) -> Callable[[Array, Array], Array]:
  """(x, dy) -> dw as _backward_filter_conv; vmapped over images (x [B, N, H, W, I],
  dy [B, N, H', W', O]) it becomes ONE batch-grouped convolution with B groups (the images
  moved into the channels) -> [B, kh, kw, I, O], instead of JAX's default batching of the
  weight-gradient conv into feature_group_count = B, which XLA's GPU backend cannot map to
  a backward-filter convolution and runs as a forward convolution with an HxW kernel
  (xla/service/gpu/transforms/conv_rewriter.cc, MatchBackwardFilter)."""
  @jax.custom_batching.custom_vmap
  def weight_grad(x, dy):
    return _backward_filter_conv(x, dy, padding, precision)

  @weight_grad.def_vmap
  def batched(axis_size, in_batched, x, dy):
    x, dy = (v if b else jnp.broadcast_to(v, (axis_size,) + v.shape)
             for v, b in zip((x, dy), in_batched))
    def images_to_channels(v):   # [B, N, H, W, C] -> [N, H, W, B*C], channel b*C + c
      return jnp.moveaxis(v, 0, -2).reshape(v.shape[1:-1] + (-1,))
    dw = _backward_filter_conv(images_to_channels(x), images_to_channels(dy), padding,
                               precision, groups=axis_size)          # [kh, kw, I, B*O]
    dw = dw.reshape(dw.shape[:3] + (axis_size, -1))
    return jnp.moveaxis(dw, 3, 0), True

  return weight_grad


# Same values and gradients as _conv_xla; (x, w, precision, padding) -> like it.
conv_tapwise = _with_weight_grad(_tapwise_weight_grad)
conv_grouped = _with_weight_grad(
    lambda x, dy, kernel_shape, padding, precision: _grouped_weight_grad(
        padding, precision)(x, dy))


def _conv_1x1_as_matmul(x: Array, w: Array, precision: Any) -> Array:
  """A 1x1 conv (w [1, 1, I, O]) as a matrix product over the channels, output in x's dtype
  (accumulated in float32). Under vmap over per-image weights it and its gradients are
  batched matrix products; as a convolution it is a grouped cuDNN conv that loops over the
  images (to_rgb at 1024, batch 8, bf16 on an H200: 16% of the tuning step's device time).
  With at most _FEW_OUTPUTS outputs (to_rgb's 3) see _conv_1x1_few_outputs."""
  if w.shape[3] <= _FEW_OUTPUTS:
    return _conv_1x1_few_outputs(x, w[0, 0], precision)
  return _channel_matmul(x, w[0, 0], precision)


def _channel_matmul(x: Array, w: Array, precision: Any) -> Array:
  """x [N, H, W, I] @ w [I, O] -> [N, H, W, O] in x's dtype, accumulated in float32 (or
  wider)."""
  return jnp.einsum("nhwi,io->nhwo", x, w, precision=precision,
                    preferred_element_type=_accumulation(x.dtype)).astype(x.dtype)


def _accumulation(*dtypes: Any) -> Any:
  """float32, or the widest of dtypes if wider (float64 with x64)."""
  return jnp.result_type(jnp.float32, *dtypes)


_FEW_OUTPUTS = 4   # 1x1 convs with at most this many outputs: _conv_1x1_few_outputs


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_1x1_few_outputs(x: Array, w: Array, precision: Any) -> Array:
  """_channel_matmul(x, w) for w [I, O <= _FEW_OUTPUTS], whose input gradient is the sum of
  O per-output products in float32 (or wider): an elementwise expression that XLA fuses
  into the pass that consumes it (the previous layer's epilogue gradient), where
  autodiff's is a matrix product with O-long rows that writes the full-resolution gradient
  map and reads it back (to_rgb at 1024: 134 MB per image and tuning step in bf16)."""
  return _channel_matmul(x, w, precision)


def _conv_1x1_few_outputs_forward(x, w, precision):
  return _channel_matmul(x, w, precision), (x, w)


def _conv_1x1_few_outputs_backward(precision, residuals, dy):
  x, w = residuals
  wide = _accumulation(dy.dtype, w.dtype)
  dy_wide, w_wide = dy.astype(wide), w.astype(wide)
  dx = sum(dy_wide[..., o, None] * w_wide[:, o] for o in range(w.shape[1]))
  dw = jnp.einsum("nhwi,nhwo->io", x, dy, precision=precision,
                  preferred_element_type=_accumulation(x.dtype, dy.dtype))
  return dx.astype(x.dtype), dw.astype(w.dtype)


_conv_1x1_few_outputs.defvjp(_conv_1x1_few_outputs_forward, _conv_1x1_few_outputs_backward)


def conv2d(x: Array, w: Array, precision: Any = None, impl: str = "xla",
           padding: Padding | None = None) -> Array:
  """Stride-1 conv with zero `padding` (default: 'same' for an odd square kernel), output
  in x's dtype (see _conv_xla). impl (the same values and gradients; what differs is how
  the convolution and its WEIGHT gradient are formed under vmap over per-image weights):
  'xla' (lax conv and JAX's autodiff), 'grouped' (conv_grouped), 'tapwise' (conv_tapwise),
  'im2col' (conv_im2col: output and weight gradient as matrix products) or 'hybrid'
  (im2col for kernels with >= IM2COL_MIN_OUT_CHANNELS outputs, where the im2col copy's
  traffic is small against the products' FLOPs, else grouped); all but 'xla' run unpadded
  1x1 kernels as matrix products (_conv_1x1_as_matmul)."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
  padding = same_padding(w.shape[0]) if padding is None else padding
  if impl != "xla" and w.shape[:2] == (1, 1) and padding == same_padding(1):
    return _conv_1x1_as_matmul(x, w, precision)
  if impl == "hybrid":
    impl = "im2col" if w.shape[3] >= IM2COL_MIN_OUT_CHANNELS else "grouped"
  fn = {"xla": _conv_xla, "grouped": conv_grouped, "tapwise": conv_tapwise,
        "im2col": conv_im2col}
  return fn[impl](x, w, precision, padding)


def _phase_kernel(k: Array, select: Callable[[Array, int], Array], taps: int) -> Array:
  """[kh, kw, I, O] -> [taps, taps, I, 2 * 2 * O]: select(k, axis) makes the 2 * taps
  (phase-kernel tap, parity) entries of one spatial axis; phases ordered (row parity,
  column parity, O)."""
  i, o = k.shape[2:]
  k = select(select(k, 0), 1).reshape(taps, 2, taps, 2, i, o)      # [a1, r1, a2, r2, I, O]
  return jnp.transpose(k, (0, 2, 4, 1, 3, 5)).reshape(taps, taps, i, 4 * o)


def subpixel_upsample_kernel(w: Array, blur: np.ndarray) -> Array:
  """The stride-2 transposed conv w [3, 3, I, O] followed by the 4x4 FIR `blur` (as
  upfirdn2d applies it), as ONE 3x3 stride-1 conv producing the 4 output phases:
  [3, 3, I, 2 * 2 * O] in w's dtype, phases ordered (row parity, column parity, O).

  1-D derivation (2-D is separable): with z the zero-inserted input, the dilated path
  computes y[s] = sum_n z[s - 3 + n] K[n], where K (6 taps) is the full convolution of w
  and the blur b, reversed. Only even z entries are non-zero, so output 2m takes taps K[1],
  K[3], K[5] and output 2m + 1 taps K[0], K[2], K[4], on x[m - 1], x[m], x[m + 1].
  The full convolution is written as shifted (padded) copies of w, which XLA fuses into one
  elementwise pass with the following dtype cast; as a contraction with a constant tap map
  (K = 9) it was, under vmap over per-image weights, a float32 GEMM at HIGHEST precision
  writing a float32 copy of every image's kernel (on an H200, bf16 tuning step at batch 8:
  a 2.8 ms SIMT GEMM of a 65 ms step).
  """
  n1, n2 = blur.shape
  full = sum(float(blur[q1, q2]) * jnp.pad(w, ((q1, n1 - 1 - q1), (q2, n2 - 1 - q2),
                                               (0, 0), (0, 0)))
             for q1 in range(n1) for q2 in range(n2) if blur[q1, q2] != 0)   # [6, 6, I, O]
  # Phase tap a of output parity r is K[2a + 1 - r] = full[4 - 2a + r]: full's pairs
  # (2j, 2j + 1) in reverse order.
  def select(v, axis):
    v = jnp.moveaxis(v, axis, 0)
    return jnp.moveaxis(v.reshape((3, 2) + v.shape[1:])[::-1].reshape(v.shape), 0, axis)
  return _phase_kernel(full, select, 3)


def transposed_phase_kernel(w: Array) -> Array:
  """The stride-2 transposed conv w [3, 3, I, O] (torch conv_transpose2d, padding 0) as ONE
  2x2 stride-1 conv producing its 4 output phases: [2, 2, I, 2 * 2 * O] in w's dtype,
  phases ordered (row parity, column parity, O), for the input zero-padded by 1 on each
  side.

  1-D: the transposed conv's output is t[m] = sum_n x[n] w[m - 2n], so t[2i] = x[i] w[0] +
  x[i - 1] w[2] and t[2i + 1] = x[i] w[1]; a 2-tap conv over the padded input gives
  o[i] = x[i - 1] k[0] + x[i] k[1] (i = 0..H), hence k_even = (w[2], w[0]) and k_odd =
  (0, w[1]). 16 taps per input pixel (9 non-zero) where the blur-folded sub-pixel kernel
  has 36. Built by slicing (no arithmetic).
  """
  def select(v, axis):    # (tap 0: even w[2], odd 0), (tap 1: even w[0], odd w[1])
    part = functools.partial(jax.lax.slice_in_dim, v, axis=axis)
    return jnp.concatenate([part(2, 3), jnp.zeros_like(part(0, 1)), part(0, 2)], axis)
  return _phase_kernel(w, select, 2)


def transposed_conv_taps(x: Array, w: Array, precision: Any) -> Array:
  """torch conv_transpose2d(x, w, stride=2, padding=0) for x [N, H, W, I], w [3, 3, I, O]
  -> [N, 2H + 2, 2W + 2, O] in x's dtype (the 2H + 1 samples, then one zero row and column):
  ONE matrix product of every input pixel with the 9 taps side by side (w as [I, 9 O],
  accumulated in float32, stored in x's dtype), then each tap's products placed at its
  stride-2 positions (t[2i + a, 2j + b] += x[i, j] w[a, b]: a pad with interior zeros)
  and summed in float32. Exactly the transposed conv's 9 multiply-adds per input pixel and
  channel pair (sub-pixel: 36, phases: 16); under vmap over per-image weights the product
  and both its gradients are batched matrix products (the products' gradient is the
  output gradient's strided slices): no convolution, no zero-inserted input."""
  n, h, wd, i = x.shape
  o = w.shape[3]
  taps = jnp.einsum("nhwi,ik->nhwk", x, jnp.transpose(w, (2, 0, 1, 3)).reshape(i, 9 * o),
                    precision=precision, preferred_element_type=jnp.float32)
  taps = taps.astype(x.dtype).reshape(n, h, wd, 3, 3, o)
  zero = jnp.zeros((), jnp.float32)
  return sum(jax.lax.pad(taps[:, :, :, a, b].astype(jnp.float32), zero,
                         ((0, 0, 0), (a, 3 - a, 1), (b, 3 - b, 1), (0, 0, 0)))
             for a in range(3) for b in range(3)).astype(x.dtype)


def fir_blur_valid(x: Array, taps: Sequence[float]) -> Array:
  """'valid' 2-D FIR filter with the kernel make_blur_kernel(taps) * 4 applied as upfirdn2d
  does (a true convolution): [N, H, W, C] -> [N, H - t + 1, W - t + 1, C], t = len(taps).
  A sum of t*t shifted slices computed in float32 and returned in x's dtype: one
  elementwise fusion on a GPU, with no convolution call (two separable passes would store
  a float32 map between them: 10.0 instead of 8.5 GB per image-step in the H200 plan)."""
  k = np.asarray(taps, np.float64)[::-1]
  k = (2.0 * k / k.sum()).astype(np.float32)        # outer(k, k) = the kernel * 4
  n = len(k)
  h, w = x.shape[1] - n + 1, x.shape[2] - n + 1
  v = x.astype(jnp.float32)
  return sum(float(k[a] * k[b]) * v[:, a:a + h, b:b + w] for a in range(n)
             for b in range(n)).astype(x.dtype)


def depth_to_space2(y: Array) -> Array:
  """[N, H, W, (2, 2, O)] phases -> [N, 2H, 2W, O]."""
  n, h, wd, c = y.shape
  y = y.reshape(n, h, wd, 2, 2, c // 4)
  return jnp.transpose(y, (0, 1, 3, 2, 4, 5)).reshape(n, 2 * h, 2 * wd, c // 4)


class EqualLinear(nn.Module):
  """rosinality EqualLinear: y = x @ (W * lr_mul / sqrt(in)) + b * lr_mul, optional fused lrelu.

  Params: weight (in, out) raw, bias (out,) raw. Input [..., in] -> [..., out].
  """
  features: int
  lr_mul: float = 1.0
  bias_init: float = 0.0
  activation: bool = False
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in = x.shape[-1]
    weight = self.param("weight", lambda k, s: jax.random.normal(k, s) / self.lr_mul,
                        (fan_in, self.features))
    bias = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
    scale = self.lr_mul / math.sqrt(fan_in)
    y = jnp.dot(x, weight * scale, precision=self.precision)
    if self.activation:
      return fused_leaky_relu(y, bias * self.lr_mul)
    return y + bias * self.lr_mul


class ModulatedConv2d(nn.Module):
  """Modulated (and optionally demodulated, upsampling) convolution of StyleGAN2.

  x: [N, H, W, Cin], style: [N, style_dim] -> [N, H', W', Cout] with H' = 2H if upsample.
  modulation "activations" (default): the "non-fused" form (modulate the input, convolve
  with the shared weight, demodulate the output), which batches shared weights without
  grouped convolutions; "weights": the official fused form (one modulated, demodulated
  weight per sample), the same function with two full-resolution passes (and their
  gradients) fewer; "auto": "weights" where the input and output maps are larger than the
  weight (high resolutions), else "activations". Modulation and demodulation are computed
  in float32; the convolution runs in `dtype` and returns `dtype`.
  """
  out_channels: int
  kernel_size: int
  demodulate: bool = True
  upsample: bool = False
  blur_kernel: Sequence[int] = (1, 3, 3, 1)
  dtype: Any = jnp.float32
  precision: Any = None
  # "dilated": transposed conv as an lhs-dilated conv, then the FIR blur (as torch does).
  # "subpixel": the same function as one 3x3 conv over the 4 output phases with the blur
  # folded into its kernel (no zero-inserted input, no separate blur pass).
  # "phases": the transposed conv as one 2x2 conv over its 4 output phases (no
  # zero-inserted input, 16 taps instead of sub-pixel's 36), then the blur as shifted
  # slices (fir_blur_valid).
  # "taps": the transposed conv as one matrix product onto its 9 taps, each placed at its
  # stride-2 output positions (transposed_conv_taps: exactly 9 taps, no convolution), then
  # the blur as for "phases".
  upsample_impl: str = "dilated"
  conv_impl: str = "xla"   # stride-1 convs: one of CONV_IMPLS (see conv2d)
  modulation: str = "activations"   # | "weights" | "auto" (see above)

  @nn.compact
  def __call__(self, x: Array, style: Array) -> Array:
    in_ch, k = x.shape[-1], self.kernel_size
    weight = self.param("weight", nn.initializers.normal(1.0),
                        (k, k, in_ch, self.out_channels))
    s = EqualLinear(in_ch, bias_init=1.0, precision=self.precision, name="modulation")(style)
    w = weight * (1.0 / math.sqrt(in_ch * k * k))                   # [k, k, in, out]
    if self.upsample_impl not in UPSAMPLE_IMPLS:
      raise ValueError(f"upsample_impl must be one of {UPSAMPLE_IMPLS}, got "
                       f"{self.upsample_impl!r}")
    if self.modulation not in MODULATIONS:
      raise ValueError(f"modulation must be one of {MODULATIONS}, got {self.modulation!r}")
    upsample = self.upsample_impl if self.upsample else None
    if upsample not in (None, "dilated") and (k != 3 or len(self.blur_kernel) != 4):
      raise ValueError(f"{upsample} upsampling is derived for a 3x3 kernel and a 4-tap blur")
    conv = functools.partial(_convolve, upsample=upsample, blur_kernel=tuple(self.blur_kernel),
                             dtype=self.dtype, precision=self.precision,
                             conv_impl=self.conv_impl)
    in_px = x.shape[1] * x.shape[2]
    if self.modulation == "weights" or (self.modulation == "auto" and (
        in_px * in_ch + in_px * (4 if self.upsample else 1) * self.out_channels
        > k * k * in_ch * self.out_channels)):
      w_n = w[None] * s[:, None, None, :, None]                     # [N, k, k, in, out]
      if self.demodulate:
        w_n = w_n * jax.lax.rsqrt(jnp.sum(jnp.square(w_n), axis=(1, 2, 3), keepdims=True)
                                  + 1e-8)
      out = (conv(x, w_n[0]) if x.shape[0] == 1 else
             jax.vmap(lambda xi, wi: conv(xi[None], wi)[0])(x, w_n))
    else:
      out = conv(x * s[:, None, None, :], w)
      if self.demodulate:
        # demod[n, o] = rsqrt(sum_{kh,kw,i} (w[kh,kw,i,o] * s[n,i])^2 + 1e-8)
        w_sq = jnp.sum(jnp.square(w), axis=(0, 1))                  # [in, out]
        demod = jax.lax.rsqrt(jnp.dot(jnp.square(s), w_sq, precision=self.precision) + 1e-8)
        out = out * demod[:, None, None, :]
    if upsample == "dilated":
      factor = 2
      p = len(self.blur_kernel) - factor - (k - 1)
      kernel = make_blur_kernel(self.blur_kernel) * factor ** 2
      out = upfirdn2d(out, kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))
    return out


def _convolve(x: Array, w: Array, upsample: str | None, blur_kernel: tuple, dtype: Any,
              precision: Any, conv_impl: str) -> Array:
  """The convolution of ModulatedConv2d with ONE weight w [k, k, in, out] (x [N, H, W, in]
  already modulated, or w modulated): stride 1 (upsample None); or the upsampling
  transposed conv, "dilated" before its blur, "subpixel" with its blur folded in, "phases"
  and "taps" followed by their blur."""
  x, k = x.astype(dtype), w.shape[0]
  if upsample == "subpixel":
    kernel = make_blur_kernel(blur_kernel) * 4
    return depth_to_space2(conv2d(
        x, subpixel_upsample_kernel(w, kernel).astype(dtype), precision, conv_impl))
  if upsample in ("phases", "taps"):
    # The (2H+1)-sample transposed conv, plus one zero row/column at 2H+1. (phases: padded
    # ahead; with the padding inside the conv, XLA's GPU backend cannot map its batch-1
    # weight gradient to cuDNN's backward-filter call.)
    if upsample == "taps":
      t = transposed_conv_taps(x, w.astype(dtype), precision)
    else:
      t = depth_to_space2(conv2d(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))),
                                 transposed_phase_kernel(w).astype(dtype), precision,
                                 conv_impl, padding=((0, 0), (0, 0))))
    # upfirdn2d's pad=(1, 1) of the dilated path: the zero at 2H+1 is the high-side one.
    return fir_blur_valid(jnp.pad(t, ((0, 0), (1, 0), (1, 0), (0, 0))), blur_kernel)
  if upsample == "dilated":
    # torch conv_transpose2d(stride 2, padding 0) == stride-1 conv of the zero-inserted
    # input, padded by k-1, with the spatially flipped kernel.
    return jax.lax.conv_general_dilated(
        x, w[::-1, ::-1].astype(dtype), window_strides=(1, 1),
        padding=((k - 1, k - 1), (k - 1, k - 1)), lhs_dilation=(2, 2),
        dimension_numbers=_NHWC, precision=precision)
  return conv2d(x, w.astype(dtype), precision, conv_impl)


class StyledConv(nn.Module):
  """ModulatedConv2d + noise injection + fused leaky ReLU (bias).

  x: [N, H, W, Cin], style: [N, style_dim], noise broadcastable to [N, H', W', 1] ->
  [N, H', W', Cout] in `dtype`: the noise, bias and activation are computed in float32 and
  the result stored in `dtype` (with bfloat16, every map between layers, and its gradient,
  is half the memory traffic).
  """
  out_channels: int
  kernel_size: int = 3
  upsample: bool = False
  blur_kernel: Sequence[int] = (1, 3, 3, 1)
  dtype: Any = jnp.float32
  precision: Any = None
  upsample_impl: str = "dilated"
  conv_impl: str = "xla"
  modulation: str = "activations"

  @nn.compact
  def __call__(self, x: Array, style: Array, noise: Array) -> Array:
    out = ModulatedConv2d(self.out_channels, self.kernel_size, upsample=self.upsample,
                          blur_kernel=self.blur_kernel, dtype=self.dtype,
                          precision=self.precision, upsample_impl=self.upsample_impl,
                          conv_impl=self.conv_impl, modulation=self.modulation,
                          name="conv")(x, style)
    noise_weight = self.param("noise_weight", nn.initializers.zeros, (1,))
    bias = self.param("activate_bias", nn.initializers.zeros, (self.out_channels,))
    return noise_bias_leaky_relu(out, noise, noise_weight, bias, self.dtype)


class ToRGB(nn.Module):
  """1x1 modulated conv (no demodulation) to RGB + bias, plus the upsampled skip.

  x: [N, H, W, C], style: [N, style_dim], skip: [N, H/2, W/2, 3] or None -> [N, H, W, 3].
  """
  blur_kernel: Sequence[int] = (1, 3, 3, 1)
  dtype: Any = jnp.float32
  precision: Any = None
  conv_impl: str = "xla"
  modulation: str = "activations"

  @nn.compact
  def __call__(self, x: Array, style: Array, skip: Array | None) -> Array:
    out = ModulatedConv2d(3, 1, demodulate=False, dtype=self.dtype, precision=self.precision,
                          conv_impl=self.conv_impl, modulation=self.modulation,
                          name="conv")(x, style)
    out = out + self.param("bias", nn.initializers.zeros, (3,))
    if skip is not None:
      factor = 2
      p = len(self.blur_kernel) - factor
      kernel = make_blur_kernel(self.blur_kernel) * factor ** 2
      out = out + upfirdn2d(skip, kernel, up=factor,
                            pad=((p + 1) // 2 + factor - 1, p // 2))
    return out
