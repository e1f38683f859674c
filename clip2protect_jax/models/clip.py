"""OpenAI CLIP (ViT image tower + causal text transformer) in Flax linen.

Follows OpenAI's `clip/model.py` (as vendored by CLIP2Protect): pre-LN residual blocks,
QuickGELU MLPs, LayerNorm eps 1e-5, a learned class token, EOT pooling (the feature at
`argmax(token id)`, the end-of-text id 49407 being the largest) and linear projections.
`encode_image` / `encode_text` return the raw (NOT normalised) embeddings, like the official
model. Parameters stay float32; `dtype` is the compute dtype of matmuls and convolutions
(float32 default; bfloat16/float16 opt-in, like the official fp16 CUDA run). LayerNorm,
softmax and the attention-mask arithmetic always run in at least float32. Matmul precision
follows JAX's default: on GPU/TPU wrap float32 runs in `jax.default_matmul_precision('highest')`
for results that match the float32 reference (TF32/bf16 passes give ~1e-3 errors).
Tokens come from `models.tokenizer.tokenize`; images from `clip_preprocess.clip_preprocess`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Architecture hyperparameters (names as OpenAI's `CLIP.__init__`)."""
  embed_dim: int = 512
  image_resolution: int = 224
  vision_layers: int = 12
  vision_width: int = 768
  vision_patch_size: int = 32
  vision_heads: int = 12          # OpenAI: vision_width // 64
  context_length: int = 77
  vocab_size: int = 49408
  transformer_width: int = 512
  transformer_heads: int = 8
  transformer_layers: int = 12

  @property
  def grid(self) -> int:
    return self.image_resolution // self.vision_patch_size


PRESETS: dict[str, CLIPConfig] = {
    "ViT-B/32": CLIPConfig(),
    "ViT-B/16": CLIPConfig(vision_patch_size=16),
    "ViT-L/14": CLIPConfig(embed_dim=768, vision_layers=24, vision_width=1024,
                           vision_patch_size=14, vision_heads=16, transformer_width=768,
                           transformer_heads=12),
    "ViT-L/14@336px": CLIPConfig(embed_dim=768, image_resolution=336, vision_layers=24,
                                 vision_width=1024, vision_patch_size=14, vision_heads=16,
                                 transformer_width=768, transformer_heads=12),
    # Not an OpenAI model: a small architecture for CPU smoke runs and tests only.
    "tiny": CLIPConfig(embed_dim=32, vision_layers=1, vision_width=32, vision_heads=2,
                       transformer_width=32, transformer_heads=2, transformer_layers=1),
}


def _ln_dtype(dtype: Dtype) -> Dtype:
  """LayerNorm/softmax dtype: float32, or float64 when the model computes in float64."""
  return jnp.promote_types(dtype, jnp.float32)


def layer_norm(x, dtype: Dtype, name: str):
  """torch LayerNorm (eps 1e-5) computed in >= float32, cast back to `dtype` (compact use)."""
  ln_dtype = _ln_dtype(dtype)
  ln = nn.LayerNorm(epsilon=1e-5, dtype=ln_dtype, param_dtype=jnp.float32, name=name)
  return ln(x.astype(ln_dtype)).astype(dtype)


def dense(features: int, dtype: Dtype, name: str, use_bias: bool = True) -> nn.Dense:
  """torch Linear as flax Dense: kernel (in, out), float32 params, `dtype` compute."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  name=name)


class Attention(nn.Module):
  """torch nn.MultiheadAttention (self-attention, q scaled by head_dim**-0.5).

  x: (B, L, W) -> (B, L, W); `causal` masks keys after the query (the text tower).
  """
  heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, causal: bool):
    b, length, width = x.shape
    hd = width // self.heads
    split = lambda t: t.reshape(b, length, self.heads, hd)
    q = split(dense(width, self.dtype, "q_proj")(x))
    k = split(dense(width, self.dtype, "k_proj")(x))
    v = split(dense(width, self.dtype, "v_proj")(x))
    q = q * jnp.asarray(hd ** -0.5, q.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    logits = logits.astype(_ln_dtype(self.dtype))
    if causal:
      allowed = jnp.tril(jnp.ones((length, length), bool))
      logits = jnp.where(allowed, logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return dense(width, self.dtype, "out_proj")(out.reshape(b, length, width))


class ResidualBlock(nn.Module):
  """x + attn(ln_1(x)); x + c_proj(quick_gelu(c_fc(ln_2(x)))). x: (B, L, W)."""
  heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, causal: bool):
    width = x.shape[-1]
    x = x + Attention(self.heads, self.dtype, name="attn")(
        layer_norm(x, self.dtype, "ln_1"), causal)
    h = dense(4 * width, self.dtype, "c_fc")(layer_norm(x, self.dtype, "ln_2"))
    h = h * jax.nn.sigmoid(jnp.asarray(1.702, h.dtype) * h)  # QuickGELU
    return x + dense(width, self.dtype, "c_proj")(h)


class Transformer(nn.Module):
  layers: int
  heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, causal: bool = False):
    for i in range(self.layers):
      x = ResidualBlock(self.heads, self.dtype, name=f"resblocks_{i}")(x, causal)
    return x


class VisionTransformer(nn.Module):
  """Images (B, R, R, 3) NHWC, CLIP-normalised (see clip_preprocess) -> (B, embed_dim)."""
  config: CLIPConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    c = self.config
    x = nn.Conv(c.vision_width, (c.vision_patch_size,) * 2, strides=(c.vision_patch_size,) * 2,
                padding="VALID", use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                name="conv1")(images.astype(self.dtype))
    b = x.shape[0]
    x = x.reshape(b, -1, c.vision_width)  # row-major over the grid, as torch's flatten
    cls = self.param("class_embedding", nn.initializers.normal(0.02), (c.vision_width,),
                     jnp.float32)
    pos = self.param("positional_embedding", nn.initializers.normal(0.01),
                     (c.grid * c.grid + 1, c.vision_width), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, c.vision_width)), x],
                        axis=1)
    x = x + pos.astype(self.dtype)
    x = layer_norm(x, self.dtype, "ln_pre")
    x = Transformer(c.vision_layers, c.vision_heads, self.dtype, name="transformer")(x)
    x = layer_norm(x[:, 0], self.dtype, "ln_post")
    proj = self.param("proj", nn.initializers.normal(c.vision_width ** -0.5),
                      (c.vision_width, c.embed_dim), jnp.float32)
    return jnp.dot(x, proj.astype(self.dtype))


class CLIP(nn.Module):
  """CLIP with `encode_image` and `encode_text`; `__call__` runs both (for init)."""
  config: CLIPConfig = CLIPConfig()
  dtype: Dtype = jnp.float32

  def setup(self):
    c = self.config
    self.visual = VisionTransformer(c, self.dtype)
    self.token_embedding = nn.Embed(c.vocab_size, c.transformer_width, dtype=self.dtype,
                                    param_dtype=jnp.float32)
    self.positional_embedding = self.param(
        "positional_embedding", nn.initializers.normal(0.01),
        (c.context_length, c.transformer_width), jnp.float32)
    self.transformer = Transformer(c.transformer_layers, c.transformer_heads, self.dtype)
    self.ln_final = nn.LayerNorm(epsilon=1e-5, dtype=_ln_dtype(self.dtype),
                                 param_dtype=jnp.float32)
    self.text_projection = self.param(
        "text_projection", nn.initializers.normal(c.transformer_width ** -0.5),
        (c.transformer_width, c.embed_dim), jnp.float32)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)),
                                  (), jnp.float32)

  def encode_image(self, images):
    """images: (B, R, R, 3) float, CLIP-normalised -> raw embeddings (B, embed_dim), `dtype`."""
    return self.visual(images)

  def encode_text(self, tokens):
    """tokens: int (N, L) with L <= context_length -> raw embeddings (N, embed_dim), `dtype`.

    L may be shorter than the context (trailing padding columns removed, see
    `trim_tokens`): with the causal mask the EOT feature does not depend on later columns.
    """
    tokens = jnp.asarray(tokens).astype(jnp.int32)
    length = tokens.shape[1]
    x = self.token_embedding(tokens) + self.positional_embedding[:length].astype(self.dtype)
    x = self.transformer(x, causal=True)
    x = self.ln_final(x.astype(_ln_dtype(self.dtype))).astype(self.dtype)
    eot = jnp.argmax(tokens, axis=-1)
    x = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]
    return jnp.dot(x, self.text_projection.astype(self.dtype))

  def __call__(self, images, tokens):
    """Returns (image_emb, text_emb, logit_scale) without normalisation."""
    return self.encode_image(images), self.encode_text(tokens), self.logit_scale


def trim_tokens(tokens: np.ndarray) -> np.ndarray:
  """Host-side: drops trailing columns that are padding (0) in every row; exact for CLIP."""
  tokens = np.asarray(tokens)
  used = np.nonzero(tokens.any(axis=0))[0]
  return tokens[:, :used[-1] + 1] if used.size else tokens[:, :1]
