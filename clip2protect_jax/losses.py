"""Stage-2 losses on face-recognition embeddings and latents (pure functions, per image).

The CLIP makeup losses live in losses_clip.py. REFERENCE.md section 4:
  L = 0.01 * L_lat + 0.7 * L_adv + 0.3 * L_clip.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from clip2protect_jax.models.face.registry import cosine_similarity

Array = jax.Array


def latent_l2(wplus: Array, wplus0: Array) -> Array:
  """L_lat = sum((w - w0)^2) over all rows and channels: [n_latent, D] x2 -> ()."""
  return jnp.sum(jnp.square(wplus - wplus0))


def fr_adversarial_loss(embeddings: Mapping[str, Array], target: Mapping[str, Array],
                        source: Mapping[str, Array], mode: str,
                        official_dodging: bool = False) -> Array:
  """Adversarial loss summed over the surrogate models (one image).

  embeddings / target / source: model name -> [D] embedding of the protected crop, of the
  target identity's photo and of the source (the user's) photo.
  impersonation: sum_m (1 - cos(f_m(x), f_m(target)))            (pull towards target)
  dodging:       - sum_m (1 - cos(f_m(x), f_m(source)))           (push away from source)
  official_dodging (quirk 4): the official code keeps the target term when dodging,
                 sum_m (1 - cos(target)) - sum_m (1 - cos(source)).
  """
  def total_distance(reference):
    return sum(1.0 - cosine_similarity(embeddings[m], reference[m]) for m in embeddings)

  if mode == "impersonation":
    return total_distance(target)
  if mode == "dodging":
    away = -total_distance(source)
    return total_distance(target) + away if official_dodging else away
  raise ValueError(f"adversarial mode must be 'impersonation' or 'dodging', got {mode!r}")
