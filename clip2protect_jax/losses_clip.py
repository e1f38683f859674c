"""CLIP makeup losses and the stage-1 LPIPS + MSE loss, as pure functions.

Text side (host, once per prompt, never inside an optimisation step):
  tpl = load templates;  ts = text_features(clip, params, tokenize(compose(tpl, "face")))
                         tt = text_features(clip, params, tokenize(compose(tpl, prompt)))
Image side (inside the step): e0 = clip_image_features(clip, params, x0) (once per image),
  e = clip_image_features(clip, params, x_aug);  loss = nce_loss(e0, e, ts, tt).
Feature conventions: *_raw = what `encode_image` / `encode_text` return (not normalised);
text features passed to the losses are L2-normalised per template row, (T, D).
"""
from __future__ import annotations

import json
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clip2protect_jax.clip_preprocess import clip_preprocess
from clip2protect_jax.models.clip import CLIP, trim_tokens
from clip2protect_jax.models.lpips import LPIPS
from clip2protect_jax.resize import resize_nearest


def l2_normalize(x: jax.Array) -> jax.Array:
  """x / ||x|| along the last axis (the official `x /= x.norm(dim=-1, keepdim=True)`)."""
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def f_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """torch `F.normalize(x, dim=-1)`: x / max(||x||, eps) (used inside the official InfoNCE)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def load_templates(path: str) -> list[str]:
  """The 79 `imagenet_templates` ("a bad photo of a {}.", ...) from a JSON list."""
  with open(path) as f:
    return list(json.load(f))


def compose(templates: Sequence[str], text: str) -> list[str]:
  return [t.format(text) for t in templates]


def text_features(model: CLIP, params: Any, tokens: np.ndarray) -> jax.Array:
  """Host-side, once per prompt: L2-normalised encode_text of (T, 77) tokens -> (T, D).

  Trailing all-padding columns are dropped first (exact under the causal mask).
  """
  raw = jax.jit(lambda p, t: model.apply(p, t, method=model.encode_text))(
      params, trim_tokens(tokens))
  return l2_normalize(raw.astype(jnp.promote_types(raw.dtype, jnp.float32)))


def clip_image_features(model: CLIP, params: Any, images: jax.Array, *,
                        official_shift: bool) -> jax.Array:
  """Raw CLIP image embeddings (B, D) of (B, H, W, 3) images in [0, 1] (jittable)."""
  x = clip_preprocess(images, official_shift=official_shift).astype(model.dtype)
  raw = model.apply(params, x, method=model.encode_image)
  return raw.astype(jnp.promote_types(raw.dtype, jnp.float32))


class InfoNCETerms(NamedTuple):
  loss: jax.Array       # () with reduction 'mean', (2B,) with 'none'
  query: jax.Array      # (2B, D): [q; q]
  positive: jax.Array   # (2B, D): [p1 x B; p2 x B]
  negative: jax.Array   # (T, D)


def info_nce(query, positive, negative, temperature: float = 0.1,
             reduction: str = "mean") -> jax.Array:
  """Official `info_nce` with unpaired negatives: CE over [q.p, q.n_1..q.n_T] / temperature,
  label 0; all three inputs re-normalised with F.normalize. query/positive (N, D), negative
  (T, D) -> () ('mean') or (N,) ('none')."""
  q, p, n = f_normalize(query), f_normalize(positive), f_normalize(negative)
  logits = jnp.concatenate([jnp.sum(q * p, axis=1, keepdims=True), q @ n.T], axis=1)
  per_row = -jax.nn.log_softmax(logits / temperature, axis=1)[:, 0]
  if reduction == "none":
    return per_row
  if reduction == "mean":
    return jnp.mean(per_row)
  raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def nce_terms(img_x0_raw, img_raw, text_src, text_tgt, temperature: float = 0.1,
              reduction: str = "mean") -> InfoNCETerms:
  """The official NCELoss.infonce_loss (REFERENCE section 5), with its InfoNCE arguments.

  img_x0_raw: (1, D) raw E(x0) of the clean image; img_raw: (B, D) raw E(x_aug);
  text_src / text_tgt: (T, D) normalised template features of "face" / the prompt.
  """
  e0 = l2_normalize(img_x0_raw)
  e = l2_normalize(img_raw)
  b = e.shape[0]
  query = l2_normalize(e - e0)
  pos1 = l2_normalize(jnp.mean(text_tgt - text_src, axis=0, keepdims=True))
  pos2 = l2_normalize(jnp.mean(text_tgt, axis=0, keepdims=True) - e0)
  negative = l2_normalize(text_src - e0[:1])
  q2 = jnp.concatenate([query, query], axis=0)
  positive = jnp.concatenate([jnp.broadcast_to(pos1, (b, pos1.shape[1])),
                              jnp.broadcast_to(pos2, (b, pos2.shape[1]))], axis=0)
  loss = info_nce(q2, positive, negative, temperature, reduction)
  return InfoNCETerms(loss, q2, positive, negative)


def nce_loss(img_x0_raw, img_raw, text_src, text_tgt, temperature: float = 0.1) -> jax.Array:
  """Scalar official CLIP InfoNCE-over-directions loss; see `nce_terms`."""
  return nce_terms(img_x0_raw, img_raw, text_src, text_tgt, temperature).loss


def text_direction(text_src, text_tgt) -> jax.Array:
  """n(mean_t(Tt - Ts)) (1, D): the official `compute_text_direction`."""
  return l2_normalize(jnp.mean(text_tgt - text_src, axis=0, keepdims=True))


def directional_clip_loss(img_x0_raw, img_raw, text_src, text_tgt) -> jax.Array:
  """Plain directional CLIP loss (StyleGAN-NADA): mean_b 1 - cos(E(x_b) - E(x0), Δtext).

  Same inputs as `nce_loss`; image features are normalised before the difference.
  """
  delta = l2_normalize(l2_normalize(img_raw) - l2_normalize(img_x0_raw))
  return jnp.mean(1.0 - jnp.sum(delta * text_direction(text_src, text_tgt), axis=-1))


class TuningTarget(NamedTuple):
  """The target side of the stage-1 loss, computed once per image (it never changes)."""
  image: jax.Array              # (N, size, size, 3): the target nearest-resized, [-1, 1]
  features: tuple | None        # LPIPS.features of `image`; None when lpips_weight is 0


def tuning_target(lpips_model: LPIPS | None, lpips_params: Any, x: jax.Array, size: int = 256,
                  lpips_weight: float = 1.0) -> TuningTarget:
  """(N, H, W, 3) targets in [-1, 1] -> their TuningTarget at the loss resolution."""
  image = resize_nearest(x, (size, size))
  if not lpips_weight:
    return TuningTarget(image, None)
  return TuningTarget(image, tuple(lpips_model.apply(lpips_params, image,
                                                     method=LPIPS.features)))


def lpips_mse_loss_to_target(lpips_model: LPIPS | None, lpips_params: Any, x_hat: jax.Array,
                             target: TuningTarget, mse_weight: float = 0.1,
                             lpips_weight: float = 1.0) -> jax.Array:
  """`lpips_mse_loss` against a prepared target: x_hat (N, H, W, 3) in [-1, 1] -> (N,)."""
  a = resize_nearest(x_hat, target.image.shape[1:3])
  mse = jnp.mean((a - target.image) ** 2, axis=(1, 2, 3))
  if not lpips_weight:  # MSE only: the LPIPS network is not run at all
    return mse_weight * mse
  feats = lpips_model.apply(lpips_params, a, method=LPIPS.features)
  return (lpips_weight * lpips_model.apply(lpips_params, feats, target.features,
                                           method=LPIPS.distance) + mse_weight * mse)


def lpips_mse_loss(lpips_model: LPIPS | None, lpips_params: Any, x_hat: jax.Array,
                   x: jax.Array, size: int = 256, mse_weight: float = 0.1,
                   lpips_weight: float = 1.0) -> jax.Array:
  """Stage-1 (pivotal tuning) loss per image: LPIPS(x̂, x) + 0.1 * mean((x̂ - x)^2), both
  images first resized to size x size by torch's legacy nearest (`F.interpolate(size=256)`).

  x_hat, x: (N, H, W, 3) in [-1, 1] -> (N,). The official code runs batch 1 and uses
  LPIPS(...).sum() + 0.1 * MSELoss(mean); summing this over N gives the same for N = 1.
  """
  return lpips_mse_loss_to_target(lpips_model, lpips_params, x_hat,
                                  tuning_target(lpips_model, lpips_params, x, size,
                                                lpips_weight), mse_weight, lpips_weight)
