"""FaceNet `InceptionResnetV1(num_classes=8631)` of models/facenet.py, used as an embedder.

classify=False: the output is F.normalize(last_bn(last_linear(avgpool(features)))). The
`logits` Linear is not ported (it only serves classify=True); convert/face.py still expects
and drops its `logits.*` entries. BatchNorm eps is 1e-3 everywhere (the TF value the
official code keeps); dropout is off. Images NHWC 160x160 in [-1, 1].
Parameter names mirror the torch state_dict (see irse.py).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from clip2protect_jax.models.face.irse import BatchNorm, conv, l2_normalize

Dtype = Any
_EPS = 1e-3


class BasicConv2d(nn.Module):
  """conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU."""
  out: int
  kernel: Any
  stride: int = 1
  padding: Any = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = conv(self.out, self.kernel, self.stride, self.padding, dtype=self.dtype, name="conv")(x)
    return nn.relu(BatchNorm(_EPS, dtype=self.dtype, name="bn")(x))


def _max_pool(x):
  """MaxPool2d(3, stride=2), no padding, floor mode."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


def _seq(x, name, specs, dtype):
  """A torch nn.Sequential of BasicConv2d: children named `{name}.{i}`."""
  for i, spec in enumerate(specs):
    x = BasicConv2d(*spec, dtype=dtype, name=f"{name}.{i}")(x)
  return x


class _ResBlock(nn.Module):
  """Block35 / Block17 / Block8: relu?(x + scale * conv2d(concat(branches)))."""
  kind: str
  scale: float = 1.0
  relu: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d, c = self.dtype, x.shape[-1]
    if self.kind == "block35":
      branches = [BasicConv2d(32, 1, dtype=d, name="branch0")(x),
                  _seq(x, "branch1", [(32, 1), (32, 3, 1, 1)], d),
                  _seq(x, "branch2", [(32, 1), (32, 3, 1, 1), (32, 3, 1, 1)], d)]
    elif self.kind == "block17":
      branches = [BasicConv2d(128, 1, dtype=d, name="branch0")(x),
                  _seq(x, "branch1", [(128, 1), (128, (1, 7), 1, (0, 3)),
                                      (128, (7, 1), 1, (3, 0))], d)]
    elif self.kind == "block8":
      branches = [BasicConv2d(192, 1, dtype=d, name="branch0")(x),
                  _seq(x, "branch1", [(192, 1), (192, (1, 3), 1, (0, 1)),
                                      (192, (3, 1), 1, (1, 0))], d)]
    else:
      raise ValueError(self.kind)
    out = conv(c, 1, bias=True, dtype=d, name="conv2d")(jnp.concatenate(branches, -1))
    out = out * self.scale + x
    return nn.relu(out) if self.relu else out


class InceptionResnetV1(nn.Module):
  """[N, 160, 160, 3] in [-1, 1] -> [N, 512] embedding.

  L2-normalised (F.normalize, eps 1e-12) if `l2_normalize` (official, classify=False),
  else the last_bn output (`emb_prenorm`).
  """
  l2_normalize: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = self.dtype
    x = jnp.asarray(x, d)
    x = BasicConv2d(32, 3, 2, dtype=d, name="conv2d_1a")(x)
    x = BasicConv2d(32, 3, 1, dtype=d, name="conv2d_2a")(x)
    x = BasicConv2d(64, 3, 1, 1, dtype=d, name="conv2d_2b")(x)
    x = _max_pool(x)  # maxpool_3a
    x = BasicConv2d(80, 1, 1, dtype=d, name="conv2d_3b")(x)
    x = BasicConv2d(192, 3, 1, dtype=d, name="conv2d_4a")(x)
    x = BasicConv2d(256, 3, 2, dtype=d, name="conv2d_4b")(x)
    for i in range(5):
      x = _ResBlock("block35", 0.17, dtype=d, name=f"repeat_1.{i}")(x)
    x = jnp.concatenate([  # mixed_6a
        BasicConv2d(384, 3, 2, dtype=d, name="mixed_6a.branch0")(x),
        _seq(x, "mixed_6a.branch1", [(192, 1), (192, 3, 1, 1), (256, 3, 2)], d),
        _max_pool(x)], -1)
    for i in range(10):
      x = _ResBlock("block17", 0.10, dtype=d, name=f"repeat_2.{i}")(x)
    x = jnp.concatenate([  # mixed_7a
        _seq(x, "mixed_7a.branch0", [(256, 1), (384, 3, 2)], d),
        _seq(x, "mixed_7a.branch1", [(256, 1), (256, 3, 2)], d),
        _seq(x, "mixed_7a.branch2", [(256, 1), (256, 3, 1, 1), (256, 3, 2)], d),
        _max_pool(x)], -1)
    for i in range(5):
      x = _ResBlock("block8", 0.20, dtype=d, name=f"repeat_3.{i}")(x)
    x = _ResBlock("block8", 1.0, relu=False, dtype=d, name="block8")(x)
    x = jnp.mean(x, axis=(1, 2))  # avgpool_1a; dropout off; flatten of [N,1792,1,1]
    x = nn.Dense(512, use_bias=False, dtype=d, name="last_linear")(x)
    x = BatchNorm(_EPS, dtype=d, name="last_bn")(x)
    return l2_normalize(x, 1e-12) if self.l2_normalize else x
