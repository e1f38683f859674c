"""Pixel-space baseline: L_inf PGD against the FR surrogates, the same adversarial loss as
stage 2 (losses.fr_adversarial_loss), for the transfer benchmark's comparison."""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from clip2protect_jax import protect
from clip2protect_jax.losses import fr_adversarial_loss

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("surrogates", "mode", "steps"))
def pgd_linf(fr_params: Mapping[str, Any], surrogates: Sequence[str], images01: Array,
             crops: Mapping[str, Array], target_emb: Mapping[str, Array], mode: str,
             eps: float = 8 / 255, step_size: float = 1 / 255, steps: int = 50) -> Array:
  """Projected signed-gradient descent in [x0 - eps, x0 + eps] ∩ [0, 1], from x0.

  images01 [N, H, W, 3] in [0, 1]; crops as protect.fr_embeddings ([N, ...] per key);
  target_emb: model -> [D] (impersonation target; the source reference is x0 itself);
  -> [N, H, W, 3] in [0, 1]. Deterministic (no random start).
  """
  surrogates = tuple(surrogates)
  source_emb = protect.fr_embeddings(surrogates, fr_params, images01, crops)

  def loss(x, crop, source):
    emb = protect.fr_embeddings(surrogates, fr_params, x[None],
                                {k: v[None] for k, v in crop.items()})
    return fr_adversarial_loss({m: e[0] for m, e in emb.items()}, target_emb, source, mode)

  grad = jax.vmap(jax.grad(loss))

  def body(_, x):
    x = x - step_size * jnp.sign(grad(x, crops, source_emb))
    return jnp.clip(jnp.clip(x, images01 - eps, images01 + eps), 0.0, 1.0)

  return jax.lax.fori_loop(0, steps, body, images01)
