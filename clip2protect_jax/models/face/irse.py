"""IR-SE-50 (`Backbone(50, 0.6, 'ir_se')`) and MobileFaceNet(512) of models/irse.py, in Flax.

Inference mode only: BatchNorm uses its running statistics (eps 1e-5, torch's default),
dropout is the identity. Images are NHWC in [-1, 1] (a face crop resized to 112x112).

Parameter names mirror the torch state_dict: the Flax path ('body.3', 'res_layer.1',
'kernel') is torch's `body.3.res_layer.1.weight`; convert/face.py relies on this.
The shared building blocks (BatchNorm, PReLU, conv) live here and are reused by
ir152.py and facenet.py.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


class BatchNorm(nn.Module):
  """Inference BatchNorm over the last axis: (x - mean) / sqrt(var + eps) * scale + bias.

  The running statistics are stored in `params` (as `mean`, `var`) next to `scale` and
  `bias`: the port is inference-only, so there is no `batch_stats` collection.
  """
  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    mean = self.param("mean", nn.initializers.zeros, (c,), self.param_dtype)
    var = self.param("var", nn.initializers.ones, (c,), self.param_dtype)
    x, scale, bias, mean, var = (jnp.asarray(a, self.dtype) for a in (x, scale, bias, mean, var))
    return (x - mean) * (scale / jnp.sqrt(var + self.eps)) + bias


class PReLU(nn.Module):
  """torch PReLU(C): x if x >= 0 else a_c * x, one slope per channel (last axis)."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    a = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],), self.param_dtype)
    x = jnp.asarray(x, self.dtype)
    return jnp.where(x >= 0, x, jnp.asarray(a, self.dtype) * x)


def conv(features: int, kernel: int | Sequence[int], stride: int = 1,
         padding: int | Sequence[int] = 0, *, groups: int = 1, bias: bool = False,
         dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Conv:
  """torch-style Conv2d on NHWC with explicit symmetric padding (never 'SAME')."""
  kh, kw = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  ph, pw = (padding, padding) if isinstance(padding, int) else tuple(padding)
  return nn.Conv(features, (kh, kw), strides=(stride, stride), padding=((ph, ph), (pw, pw)),
                 feature_group_count=groups, use_bias=bias, dtype=dtype, name=name)


def l2_normalize(x, eps: float = 0.0):
  """x / ||x||_2 over the last axis; eps=0 is irse.py's `l2_norm`, 1e-12 is F.normalize."""
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / (jnp.maximum(norm, eps) if eps else norm)


def flatten_nchw(x):
  """[N, H, W, C] -> [N, C*H*W] in torch's NCHW flatten order (for the Linear after it).

  We transpose the activations rather than permuting the converted Linear weight, so the
  converter stays a plain `.T` and the Dense kernel keeps torch's row order.
  """
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


# ------------------------------------------------------------------ IR / IR-SE backbone

_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
_DEPTHS = (64, 128, 256, 512)


def block_config(num_layers: int) -> list[tuple[int, int, int]]:
  """(in_channel, depth, stride) per bottleneck unit, as get_blocks(num_layers)."""
  out, in_c = [], 64
  for depth, units in zip(_DEPTHS, _UNITS[num_layers]):
    out.append((in_c, depth, 2))
    out.extend((depth, depth, 1) for _ in range(units - 1))
    in_c = depth
  return out


class SEModule(nn.Module):
  """Squeeze-excitation: x * sigmoid(fc2(relu(fc1(mean_hw(x))))), 1x1 convs without bias."""
  channels: int
  reduction: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(conv(self.channels // self.reduction, 1, dtype=self.dtype, name="fc1")(s))
    s = nn.sigmoid(conv(self.channels, 1, dtype=self.dtype, name="fc2")(s))
    return x * s


class BottleneckIR(nn.Module):
  """bottleneck_IR / bottleneck_IR_SE: BN-conv3x3-PReLU-conv3x3(stride)-BN[-SE] + shortcut."""
  in_channel: int
  depth: int
  stride: int
  se: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d, s = self.dtype, self.stride
    if self.in_channel == self.depth:
      shortcut = x[:, ::s, ::s, :]  # MaxPool2d(1, stride)
    else:
      shortcut = conv(self.depth, 1, s, dtype=d, name="shortcut_layer.0")(x)
      shortcut = BatchNorm(dtype=d, name="shortcut_layer.1")(shortcut)
    r = BatchNorm(dtype=d, name="res_layer.0")(x)
    r = conv(self.depth, 3, 1, 1, dtype=d, name="res_layer.1")(r)
    r = PReLU(dtype=d, name="res_layer.2")(r)
    r = conv(self.depth, 3, s, 1, dtype=d, name="res_layer.3")(r)
    r = BatchNorm(dtype=d, name="res_layer.4")(r)
    if self.se:
      r = SEModule(self.depth, 16, dtype=d, name="res_layer.5")(r)
    return r + shortcut


class Backbone(nn.Module):
  """irse.py `Backbone(num_layers, drop_ratio, mode)` (== ir152.py's Backbone at 112/224).

  Input [N, 112, 112, 3] (or 224) in [-1, 1]. Output [N, 512]: L2-normalised if
  `l2_normalize` (irse.py), else the raw BatchNorm1d output (ir152.py; also `emb_prenorm`).
  """
  num_layers: int = 50
  mode: str = "ir_se"
  l2_normalize: bool = True
  embedding_size: int = 512
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = self.dtype
    if self.mode not in ("ir", "ir_se"):
      raise ValueError(f"mode must be 'ir' or 'ir_se', got {self.mode!r}")
    x = jnp.asarray(x, d)
    x = conv(64, 3, 1, 1, dtype=d, name="input_layer.0")(x)
    x = BatchNorm(dtype=d, name="input_layer.1")(x)
    x = PReLU(dtype=d, name="input_layer.2")(x)
    for i, (cin, depth, stride) in enumerate(block_config(self.num_layers)):
      x = BottleneckIR(cin, depth, stride, self.mode == "ir_se", dtype=d, name=f"body.{i}")(x)
    x = BatchNorm(dtype=d, name="output_layer.0")(x)  # output_layer.1 is Dropout (off)
    x = nn.Dense(self.embedding_size, dtype=d, name="output_layer.3")(flatten_nchw(x))
    x = BatchNorm(dtype=d, name="output_layer.4")(x)
    return l2_normalize(x) if self.l2_normalize else x


def IRSE50(*, l2_normalize: bool = True, dtype: Dtype = jnp.float32) -> Backbone:
  """`Backbone(50, 0.6, 'ir_se')`: [N,112,112,3] in [-1,1] -> [N,512] L2-normalised."""
  return Backbone(50, "ir_se", l2_normalize=l2_normalize, dtype=dtype)


# ------------------------------------------------------------------ MobileFaceNet

class ConvBlock(nn.Module):
  """Conv_block (conv, BN, PReLU) or, with `linear`, Linear_block (conv, BN)."""
  out_c: int
  kernel: int = 1
  stride: int = 1
  padding: int = 0
  groups: int = 1
  linear: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = conv(self.out_c, self.kernel, self.stride, self.padding, groups=self.groups,
             dtype=self.dtype, name="conv")(x)
    x = BatchNorm(dtype=self.dtype, name="bn")(x)
    return x if self.linear else PReLU(dtype=self.dtype, name="prelu")(x)


class DepthWise(nn.Module):
  """Depth_Wise: 1x1 expand to `groups`, 3x3 depthwise (stride), 1x1 project [+ input]."""
  out_c: int
  groups: int
  stride: int = 2
  residual: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d, g = self.dtype, self.groups
    y = ConvBlock(g, dtype=d, name="conv")(x)
    y = ConvBlock(g, 3, self.stride, 1, groups=g, dtype=d, name="conv_dw")(y)
    y = ConvBlock(self.out_c, linear=True, dtype=d, name="project")(y)
    return x + y if self.residual else y


class Residual(nn.Module):
  """Residual: `num_block` residual Depth_Wise units (stride 1), named model.0, model.1, ..."""
  c: int
  num_block: int
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_block):
      x = DepthWise(self.c, self.groups, 1, True, dtype=self.dtype, name=f"model.{i}")(x)
    return x


class MobileFaceNet(nn.Module):
  """irse.py `MobileFaceNet(embedding_size)`.

  Input [N, 112, 112, 3] in [-1, 1]. Output [N, embedding_size], L2-normalised if
  `l2_normalize` (official), else the final BatchNorm1d output (`emb_prenorm`).
  """
  embedding_size: int = 512
  l2_normalize: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = self.dtype
    x = jnp.asarray(x, d)
    x = ConvBlock(64, 3, 2, 1, dtype=d, name="conv1")(x)
    x = ConvBlock(64, 3, 1, 1, groups=64, dtype=d, name="conv2_dw")(x)
    x = DepthWise(64, 128, dtype=d, name="conv_23")(x)
    x = Residual(64, 4, 128, dtype=d, name="conv_3")(x)
    x = DepthWise(128, 256, dtype=d, name="conv_34")(x)
    x = Residual(128, 6, 256, dtype=d, name="conv_4")(x)
    x = DepthWise(128, 512, dtype=d, name="conv_45")(x)
    x = Residual(128, 2, 256, dtype=d, name="conv_5")(x)
    x = ConvBlock(512, dtype=d, name="conv_6_sep")(x)
    x = ConvBlock(512, 7, groups=512, linear=True, dtype=d, name="conv_6_dw")(x)
    x = nn.Dense(self.embedding_size, use_bias=False, dtype=d, name="linear")(flatten_nchw(x))
    x = BatchNorm(dtype=d, name="bn")(x)
    return l2_normalize(x) if self.l2_normalize else x
