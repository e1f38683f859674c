"""dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1`), in Flax.

The 29-conv ResNet behind `dlib.face_recognition_model_v1`: 150x150 RGB face chip (as cut
by `dlib.get_face_chip(img, shape5, size=150, padding=0.25)`) -> 128-D descriptor, whose
euclidean distances are compared against dlib's 0.6 same-person threshold.

Topology (dlib's `anet_type`; also face-api's FaceRecognitionNet):
  (x - mean_rgb) / 256 -> con 7x7/2 (32) -> affine -> relu -> max_pool 3x3/2
  -> 3 x res(32) -> res_down(64) + 3 x res(64) -> res_down(128) + 2 x res(128)
  -> res_down(256) + 2 x res(256) -> res_down(256) -> mean over H, W -> fc 256->128 (no bias)
res(N):      relu(x + affine(con3x3(relu(affine(con3x3(x))))))
res_down(N): relu(avg_pool2x2/2(x) + affine(con3x3(relu(affine(con3x3/2(x)))))); the two
             summands are zero-padded at the end (bottom rows, right columns, last
             channels) to their common max shape, as dlib's add_prev does.
dlib's padding rule: stride-1 layers pad k//2 on every side, stride-2 layers (convs and
pools) do not pad, output = 1 + (in - k) // 2. Spatial sizes: 150 -> 72 -> 35 -> 17 -> 8
-> 4 (conv 3, pool 4) -> 2 (conv 1, pool 2).
`affine` is the inference form of dlib's batch norm: x * weights + biases per channel.

Parameter names mirror face-api's TF.js weight names: `conv64_down/conv1/conv/filters` is
the Flax leaf ('conv64_down', 'conv1', 'conv', 'kernel'), `.../conv/bias` -> 'bias',
`.../scale/weights|biases` -> ('...', 'scale', 'scale'|'bias') (human.Affine), `fc`
(256, 128) -> ('fc', 'kernel').
convert/dlib_resnet.py relies on this. Inference only; everything is differentiable w.r.t.
the input.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from clip2protect_jax.models.face.human import Affine

Dtype = Any

# dlib's input_rgb_image(_sized) mean (R, G, B); pixels are then divided by 256 (face-api
# divides by 255, which is not what the C++ net was trained with).
MEAN_RGB = (122.782, 117.001, 104.298)
INPUT_SCALE = 256.0
CHIP_SIZE = 150        # dlib.get_face_chip(..., size=150, padding=0.25)
CHIP_PADDING = 0.25
DESCRIPTOR_DIM = 128
SAME_PERSON_THRESHOLD = 0.6  # dlib's documented euclidean distance threshold

# (name, channels, downsample) of the residual blocks, in order.
BLOCKS = (
    ("conv32_1", 32, False), ("conv32_2", 32, False), ("conv32_3", 32, False),
    ("conv64_down", 64, True), ("conv64_1", 64, False), ("conv64_2", 64, False),
    ("conv64_3", 64, False),
    ("conv128_down", 128, True), ("conv128_1", 128, False), ("conv128_2", 128, False),
    ("conv256_down", 256, True), ("conv256_1", 256, False), ("conv256_2", 256, False),
    ("conv256_down_out", 256, True),
)


class ConvLayer(nn.Module):
  """con(k x k, stride, bias) -> affine [-> relu], with dlib's padding rule.

  stride 1 pads k // 2 on each side ('same'); stride 2 does not pad ('valid', floor).
  """
  features: int
  kernel: int = 3
  stride: int = 1
  relu: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.kernel // 2 if self.stride == 1 else 0
    x = nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                padding=((p, p), (p, p)), use_bias=True, dtype=self.dtype, name="conv")(x)
    x = Affine(dtype=self.dtype, name="scale")(x)   # dlib `affine`
    return nn.relu(x) if self.relu else x


def _pad_to(x, shape):
  """Zero-pads x [N, H, W, C] at the end of H, W, C up to `shape` (dlib add_prev)."""
  pads = [(0, 0)] + [(0, s - d) for d, s in zip(x.shape[1:], shape[1:])]
  return jnp.pad(x, pads) if any(p[1] for p in pads) else x


class Residual(nn.Module):
  """dlib `ares` / `ares_down`: relu(shortcut(x) + conv2(conv1(x)))."""
  features: int
  down: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = self.dtype
    y = ConvLayer(self.features, 3, 2 if self.down else 1, True, dtype=d, name="conv1")(x)
    y = ConvLayer(self.features, 3, 1, False, dtype=d, name="conv2")(y)
    if self.down:
      x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    shape = tuple(max(a, b) for a, b in zip(x.shape, y.shape))
    return nn.relu(_pad_to(jnp.asarray(x, d), shape) + _pad_to(y, shape))


class DlibResNet(nn.Module):
  """dlib's 128-D face descriptor network.

  __call__(x): x [N, 150, 150, 3] float RGB in [0, 255] (the pixels of a
  `dlib.get_face_chip(img, shape5, 150, 0.25)` chip, as floats) -> [N, 128] raw descriptor
  (not re-normalised; same scale as `face_recognition_model_v1.compute_face_descriptor`:
  norm ~1.4-1.6 on real faces, same person if euclidean distance < 0.6). Mean subtraction
  and /256 happen inside. Other input sizes run but are not what the net was trained on.
  """
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = self.dtype
    x = (jnp.asarray(x, d) - jnp.asarray(MEAN_RGB, d)) / jnp.asarray(INPUT_SCALE, d)
    x = ConvLayer(32, 7, 2, True, dtype=d, name="conv32_down")(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    for name, features, down in BLOCKS:
      x = Residual(features, down, dtype=d, name=name)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(DESCRIPTOR_DIM, use_bias=False, dtype=d, name="fc")(x)
