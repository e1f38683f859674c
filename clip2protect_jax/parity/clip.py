"""Golden item `clip`: OpenAI CLIP ViT-B/32 (recipe v1 seed 6) and the BPE tokenizer.

Recipe weights -> `convert_openai_state_dict` -> `encode_image` on the stored (2,3,224,224)
inputs and `encode_text` on the stored tokens; 5e-5 scaled (float32) / 1e-10 against
`*_f64`. Token ids of every golden string list are compared exactly (tol 0), in both modes.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clip2protect_jax.convert.clip import convert_openai_state_dict
from clip2protect_jax.models import clip as clip_model
from clip2protect_jax.models.tokenizer import tokenize
from clip2protect_jax.parity import Comparison, compare
from clip2protect_jax.parity.recipe import load_arrays, recipe_v1_state_dict

TOL, TOL_F64 = 5e-5, 1e-10


def config_from_manifest(entry: dict[str, Any]) -> clip_model.CLIPConfig:
  """CLIPConfig from the manifest's `CLIP(embed_dim, image_resolution, vision_layers,
  vision_width, vision_patch_size, context_length, vocab_size, transformer_width,
  transformer_heads, transformer_layers)` constructor string (vision heads = width // 64)."""
  args = [int(a) for a in re.search(r"CLIP\(([^)]*)\)", entry["constructor"]).group(1).split(",")]
  names = ("embed_dim", "image_resolution", "vision_layers", "vision_width",
           "vision_patch_size", "context_length", "vocab_size", "transformer_width",
           "transformer_heads", "transformer_layers")
  kw = dict(zip(names, args))
  return clip_model.CLIPConfig(**kw, vision_heads=kw["vision_width"] // 64)


_CACHE: dict[str, Any] = {}  # one converted recipe model (about 0.6 GB) per process


def recipe_params(manifest: dict[str, Any], float64: bool = False) -> dict[str, Any]:
  """Recipe-v1 CLIP weights through the OpenAI converter (cached, keyed by checksums)."""
  entry = manifest["models"]["clip"]
  key = json.dumps([entry["recipe_seed"], entry["checksums"]], sort_keys=True)
  if key not in _CACHE:
    _CACHE.clear()
    _CACHE[key] = convert_openai_state_dict(recipe_v1_state_dict(entry),
                                            config_from_manifest(entry))
  params = _CACHE[key]
  if float64:
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  return params


def model(manifest: dict[str, Any], float64: bool = False) -> clip_model.CLIP:
  return clip_model.CLIP(config_from_manifest(manifest["models"]["clip"]),
                         dtype=jnp.float64 if float64 else jnp.float32)


def templates(golden_dir: str) -> list[str]:
  with open(os.path.join(golden_dir, "text_templates.json")) as f:
    return json.load(f)


def token_comparisons(item: str, golden_dir: str, g: dict[str, np.ndarray]) -> list[Comparison]:
  cases = [("tokens", list(g["prompts"])), ("tokens_extra", list(g["extra_strings"]))]
  tpl_path = os.path.join(golden_dir, "text_templates.json")
  if os.path.exists(tpl_path):
    tpl = templates(golden_dir)
    cases += [("tokens_templates_face", [t.format("face") for t in tpl]),
              ("tokens_templates_red_lipstick", [t.format("red lipstick") for t in tpl])]
  return [compare(item, name, tokenize([str(s) for s in strings]), g[name], 0.0)
          for name, strings in cases]


def run(item: str, golden_dir: str, manifest: dict[str, Any],
        float64: bool = False) -> list[Comparison]:
  g = load_arrays(golden_dir, manifest["models"]["clip"]["file"])
  dt = np.float64 if float64 else np.float32
  params, m = recipe_params(manifest, float64), model(manifest, float64)
  image = np.transpose(g["image"], (0, 2, 3, 1)).astype(dt)
  image_emb = jax.jit(lambda p, x: m.apply(p, x, method=m.encode_image))(params, image)
  tokens = clip_model.trim_tokens(g["tokens"])
  text_emb = jax.jit(lambda p, t: m.apply(p, t, method=m.encode_text))(params, tokens)
  suffix, tol = ("_f64", TOL_F64) if float64 else ("", TOL)
  return [compare(item, "image_emb", image_emb, g["image_emb" + suffix], tol),
          compare(item, "text_emb", text_emb, g["text_emb" + suffix], tol),
          *token_comparisons(item, golden_dir, g)]
