"""Golden item `nce_loss`: the official CLIP InfoNCE loss (criteria/nce_loss.py, infonce.py).

Synthetic part: raw features injected at the encoder outputs (text rows normalised as
`get_text_features` does), B = 1 and B = 2; loss, per-row loss and the three InfoNCE
arguments. End-to-end part: uint8 images through the official preprocess (with its
(v+1)/2 quirk) and the recipe CLIP of `clip.npz`, texts through our tokenizer and the 79
templates. Tolerances from golden/README.md; --float64 compares the `*_f64` twins.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clip2protect_jax import losses_clip as L
from clip2protect_jax.models.tokenizer import tokenize
from clip2protect_jax.parity import Comparison, compare
from clip2protect_jax.parity import clip as clip_parity
from clip2protect_jax.parity.recipe import load_arrays

SOURCE, TARGET = "face", "red lipstick"  # NCELoss.forward(x0, 'face', x_aug, 'red lipstick')
TOL = {"loss": 1e-5, "infonce": 1e-5, "raw": 5e-5, "e2e_infonce_query": 5e-4}
TOL_F64 = {"loss": 1e-12, "e2e": 1e-10}


def _synthetic(item, g, float64) -> list[Comparison]:
  dt = np.float64 if float64 else np.float32
  ts, tt = (L.l2_normalize(jnp.asarray(g[k], dt)) for k in ("text_src_raw", "text_tgt_raw"))
  x0 = jnp.asarray(g["img_x0_raw"], dt)
  out = []
  for sfx, aug in (("", "img_aug_raw"), ("_b2", "img_aug_raw_b2")):
    terms = L.nce_terms(x0, jnp.asarray(g[aug], dt), ts, tt)
    per_row = L.nce_terms(x0, jnp.asarray(g[aug], dt), ts, tt, reduction="none").loss
    if float64:
      out += [compare(item, f"loss{sfx}", terms.loss, g[f"loss{sfx}_f64"], TOL_F64["loss"]),
              compare(item, f"loss_per_row{sfx}", per_row, g[f"loss_per_row{sfx}_f64"],
                      TOL_F64["loss"])]
      continue
    out += [compare(item, f"loss{sfx}", terms.loss, g[f"loss{sfx}"], TOL["loss"]),
            compare(item, f"loss_per_row{sfx}", per_row, g[f"loss_per_row{sfx}"], TOL["loss"])]
    for name in ("query", "positive", "negative"):
      out.append(compare(item, f"infonce_{name}{sfx}", getattr(terms, name),
                         g[f"infonce_{name}{sfx}"], TOL["infonce"]))
  return out


def _end_to_end(item, golden_dir, manifest, g, float64) -> list[Comparison]:
  dt = np.float64 if float64 else np.float32
  params = clip_parity.recipe_params(manifest, float64)
  model = clip_parity.model(manifest, float64)
  tpl = clip_parity.templates(golden_dir)
  ts_raw, tt_raw = (jax.jit(lambda p, t: model.apply(p, t, method=model.encode_text))(
      params, L.trim_tokens(tokenize(L.compose(tpl, c)))) for c in (SOURCE, TARGET))
  image_fn = jax.jit(lambda p, x: L.clip_image_features(model, p, x, official_shift=True))
  # The float64 reference cast the float32 image u8 / 255 up (README: inputs are float32).
  x0, xa = (image_fn(params, (np.transpose(g[k], (0, 2, 3, 1)).astype(np.float32) /
                              np.float32(255)).astype(dt))
            for k in ("e2e_x0_u8", "e2e_xaug_u8"))
  terms = L.nce_terms(x0, xa, L.l2_normalize(ts_raw), L.l2_normalize(tt_raw))
  raws = {"e2e_img_x0_raw": x0, "e2e_img_aug_raw": xa, "e2e_text_src_raw": ts_raw,
          "e2e_text_tgt_raw": tt_raw}
  if float64:
    return [compare(item, "e2e_loss", terms.loss, g["e2e_loss_f64"], TOL_F64["e2e"]),
            *(compare(item, k, v, g[k + "_f64"], TOL_F64["e2e"]) for k, v in raws.items())]
  return [compare(item, "e2e_loss", terms.loss, g["e2e_loss"], TOL["loss"]),
          *(compare(item, k, v, g[k], TOL["raw"]) for k, v in raws.items()),
          compare(item, "e2e_infonce_query", terms.query, g["e2e_infonce_query"],
                  TOL["e2e_infonce_query"]),
          compare(item, "e2e_infonce_positive", terms.positive, g["e2e_infonce_positive"],
                  TOL["raw"]),
          compare(item, "e2e_infonce_negative", terms.negative, g["e2e_infonce_negative"],
                  TOL["raw"])]


def run(item: str, golden_dir: str, manifest: dict[str, Any],
        float64: bool = False) -> list[Comparison]:
  g = load_arrays(golden_dir, "nce_loss.npz")
  return _synthetic(item, g, float64) + _end_to_end(item, golden_dir, manifest, g, float64)
