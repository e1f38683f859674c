"""CLIP checkpoints -> Flax params of `clip2protect_jax.models.clip.CLIP`.

Two inputs, one output tree (plain numpy float32):
- OpenAI format (`ViT-B-32.pt`, a TorchScript archive; `{k: v.float().numpy()}` of its
  state_dict, stored in fp16): `convert_openai_state_dict`.
- Hugging Face `CLIPModel` (safetensors key names): `convert_hf_state_dict`; it is checked
  under its own names, then renamed to the OpenAI layout (q/k/v stacked back into
  `in_proj_*`, projections transposed) and converted the same way.

Renamings (torch -> flax): `X.weight` of a LayerNorm -> `X/scale`; Linear weight (out, in)
-> Dense kernel (in, out) (`.T`); `attn.in_proj_weight` (3W, W) split into q, k, v in that
order, each `.T`; patch conv OIHW -> HWIO; `visual.proj` / `text_projection` are used as
`x @ P`, so they are copied unchanged. Expected names and shapes come from the config,
so a missing, extra or mis-shaped key raises WeightsMismatchError naming it.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flax.traverse_util import unflatten_dict

from clip2protect_jax.convert.common import (as_float32, check_state_dict, conv_oihw_to_hwio,
                                             linear_to_dense)
from clip2protect_jax.models.clip import PRESETS, CLIPConfig

# Integer metadata entries of the OpenAI TorchScript state_dict (OpenAI's build_model drops them).
_OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")


def _block_shapes(prefix: str, width: int) -> dict[str, tuple]:
  return {
      f"{prefix}.attn.in_proj_weight": (3 * width, width),
      f"{prefix}.attn.in_proj_bias": (3 * width,),
      f"{prefix}.attn.out_proj.weight": (width, width),
      f"{prefix}.attn.out_proj.bias": (width,),
      f"{prefix}.ln_1.weight": (width,), f"{prefix}.ln_1.bias": (width,),
      f"{prefix}.mlp.c_fc.weight": (4 * width, width), f"{prefix}.mlp.c_fc.bias": (4 * width,),
      f"{prefix}.mlp.c_proj.weight": (width, 4 * width), f"{prefix}.mlp.c_proj.bias": (width,),
      f"{prefix}.ln_2.weight": (width,), f"{prefix}.ln_2.bias": (width,),
  }


def openai_shapes(config: CLIPConfig) -> dict[str, tuple]:
  """torch name -> shape of OpenAI's CLIP state_dict for `config` (no metadata entries)."""
  c, tw, vw = config, config.transformer_width, config.vision_width
  shapes = {
      "positional_embedding": (c.context_length, tw),
      "text_projection": (tw, c.embed_dim),
      "logit_scale": (),
      "visual.class_embedding": (vw,),
      "visual.positional_embedding": (c.grid * c.grid + 1, vw),
      "visual.proj": (vw, c.embed_dim),
      "visual.conv1.weight": (vw, 3, c.vision_patch_size, c.vision_patch_size),
      "visual.ln_pre.weight": (vw,), "visual.ln_pre.bias": (vw,),
      "visual.ln_post.weight": (vw,), "visual.ln_post.bias": (vw,),
      "token_embedding.weight": (c.vocab_size, tw),
      "ln_final.weight": (tw,), "ln_final.bias": (tw,),
  }
  for i in range(c.vision_layers):
    shapes.update(_block_shapes(f"visual.transformer.resblocks.{i}", vw))
  for i in range(c.transformer_layers):
    shapes.update(_block_shapes(f"transformer.resblocks.{i}", tw))
  return shapes


def _convert_block(sd: Mapping[str, Any], torch_prefix: str, flax_prefix: str,
                   out: dict[tuple, np.ndarray]) -> None:
  w = as_float32(sd[f"{torch_prefix}.attn.in_proj_weight"])
  b = as_float32(sd[f"{torch_prefix}.attn.in_proj_bias"])
  width = w.shape[1]
  fp = tuple(flax_prefix.split("/"))
  for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
    out[fp + ("attn", name, "kernel")] = linear_to_dense(w[j * width:(j + 1) * width])
    out[fp + ("attn", name, "bias")] = b[j * width:(j + 1) * width].copy()
  linears = {"attn.out_proj": ("attn", "out_proj"), "mlp.c_fc": ("c_fc",),
             "mlp.c_proj": ("c_proj",)}
  for tname, fname in linears.items():
    out[fp + fname + ("kernel",)] = linear_to_dense(sd[f"{torch_prefix}.{tname}.weight"])
    out[fp + fname + ("bias",)] = as_float32(sd[f"{torch_prefix}.{tname}.bias"])
  for ln in ("ln_1", "ln_2"):
    out[fp + (ln, "scale")] = as_float32(sd[f"{torch_prefix}.{ln}.weight"])
    out[fp + (ln, "bias")] = as_float32(sd[f"{torch_prefix}.{ln}.bias"])


def convert_openai_state_dict(state_dict: Mapping[str, Any],
                              config: CLIPConfig = PRESETS["ViT-B/32"]) -> dict[str, Any]:
  """OpenAI CLIP state_dict (numpy arrays, any float dtype) -> {'params': ...} float32.

  The TorchScript archive's integer entries input_resolution / context_length / vocab_size
  are accepted if present and must agree with `config`.
  """
  sd = dict(state_dict)
  for key, want in zip(_OPENAI_METADATA,
                       (config.image_resolution, config.context_length, config.vocab_size)):
    if key in sd:
      got = int(np.asarray(sd.pop(key)))
      if got != want:
        raise ValueError(f"OpenAI CLIP checkpoint has {key}={got}, config expects {want}")
  check_state_dict(sd, openai_shapes(config), "OpenAI CLIP state_dict",
                   hint=f"config: {config}")
  f = as_float32
  out: dict[tuple, np.ndarray] = {
      ("positional_embedding",): f(sd["positional_embedding"]),
      ("text_projection",): f(sd["text_projection"]),
      ("logit_scale",): f(sd["logit_scale"]),
      ("token_embedding", "embedding"): f(sd["token_embedding.weight"]),
      ("ln_final", "scale"): f(sd["ln_final.weight"]),
      ("ln_final", "bias"): f(sd["ln_final.bias"]),
      ("visual", "class_embedding"): f(sd["visual.class_embedding"]),
      ("visual", "positional_embedding"): f(sd["visual.positional_embedding"]),
      ("visual", "proj"): f(sd["visual.proj"]),
      ("visual", "conv1", "kernel"): conv_oihw_to_hwio(sd["visual.conv1.weight"]),
  }
  for ln in ("ln_pre", "ln_post"):
    out[("visual", ln, "scale")] = f(sd[f"visual.{ln}.weight"])
    out[("visual", ln, "bias")] = f(sd[f"visual.{ln}.bias"])
  for i in range(config.vision_layers):
    _convert_block(sd, f"visual.transformer.resblocks.{i}",
                   f"visual/transformer/resblocks_{i}", out)
  for i in range(config.transformer_layers):
    _convert_block(sd, f"transformer.resblocks.{i}", f"transformer/resblocks_{i}", out)
  return {"params": unflatten_dict(out)}


# ---------------------------------------------------------------- Hugging Face CLIPModel
def _hf_layer_names(hf: str, oa: str) -> dict[str, str]:
  """HF encoder-layer names -> OpenAI block names, per parameter (q/k/v handled apart)."""
  pairs = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1",
           "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj", "layer_norm2": "ln_2"}
  return {f"{hf}.{h}.{p}": f"{oa}.{o}.{p}" for h, o in pairs.items() for p in ("weight", "bias")}


def _hf_renames(config: CLIPConfig) -> dict[str, str]:
  """HF name -> OpenAI name for every non-q/k/v entry (projections handled apart)."""
  names = {
      "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
      "text_model.embeddings.position_embedding.weight": "positional_embedding",
      "text_model.final_layer_norm.weight": "ln_final.weight",
      "text_model.final_layer_norm.bias": "ln_final.bias",
      "vision_model.embeddings.class_embedding": "visual.class_embedding",
      "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
      "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
      "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic, HF's spelling
      "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
      "vision_model.post_layernorm.weight": "visual.ln_post.weight",
      "vision_model.post_layernorm.bias": "visual.ln_post.bias",
      "logit_scale": "logit_scale",
  }
  for i in range(config.transformer_layers):
    names.update(_hf_layer_names(f"text_model.encoder.layers.{i}", f"transformer.resblocks.{i}"))
  for i in range(config.vision_layers):
    names.update(_hf_layer_names(f"vision_model.encoder.layers.{i}",
                                 f"visual.transformer.resblocks.{i}"))
  return names


def _hf_towers(config: CLIPConfig):
  return (("text_model.encoder.layers", "transformer.resblocks", config.transformer_layers,
           config.transformer_width),
          ("vision_model.encoder.layers", "visual.transformer.resblocks", config.vision_layers,
           config.vision_width))


def hf_shapes(config: CLIPConfig) -> dict[str, tuple]:
  """HF CLIPModel name -> shape for `config` (without the optional position_ids buffers)."""
  oa = openai_shapes(config)
  shapes = {hf: oa[o] for hf, o in _hf_renames(config).items()}
  for hf_prefix, _, layers, width in _hf_towers(config):
    for i in range(layers):
      for proj in ("q_proj", "k_proj", "v_proj"):
        shapes[f"{hf_prefix}.{i}.self_attn.{proj}.weight"] = (width, width)
        shapes[f"{hf_prefix}.{i}.self_attn.{proj}.bias"] = (width,)
  shapes["visual_projection.weight"] = (config.embed_dim, config.vision_width)
  shapes["text_projection.weight"] = (config.embed_dim, config.transformer_width)
  return shapes


def convert_hf_state_dict(state_dict: Mapping[str, Any], config: CLIPConfig) -> dict[str, Any]:
  """HF `CLIPModel` state_dict / safetensors (numpy) -> the same params as the OpenAI path.

  The buffers `{text,vision}_model.embeddings.position_ids` (saved by older transformers)
  are accepted if present and must be 0..n-1.
  """
  sd = dict(state_dict)
  for key in ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"):
    if key in sd:
      ids = np.asarray(sd.pop(key)).reshape(-1)
      if not np.array_equal(ids, np.arange(ids.size)):
        raise ValueError(f"{key} is not 0..{ids.size - 1}")
  check_state_dict(sd, hf_shapes(config), "Hugging Face CLIPModel state_dict",
                   hint=f"config: {config}")
  oa = {o: sd[hf] for hf, o in _hf_renames(config).items()}
  for hf_prefix, oa_prefix, layers, _ in _hf_towers(config):
    for i in range(layers):
      get = lambda proj, p: as_float32(sd[f"{hf_prefix}.{i}.self_attn.{proj}.{p}"])
      for p, oa_name in (("weight", "in_proj_weight"), ("bias", "in_proj_bias")):
        oa[f"{oa_prefix}.{i}.attn.{oa_name}"] = np.concatenate(
            [get("q_proj", p), get("k_proj", p), get("v_proj", p)], axis=0)
  oa["visual.proj"] = linear_to_dense(sd["visual_projection.weight"])
  oa["text_projection"] = linear_to_dense(sd["text_projection.weight"])
  return convert_openai_state_dict(oa, config)


def config_from_hf(hf_config: Any) -> CLIPConfig:
  """CLIPConfig from a transformers `CLIPConfig` (object or its `to_dict()`)."""
  d = hf_config if isinstance(hf_config, Mapping) else hf_config.to_dict()
  t, v = d["text_config"], d["vision_config"]
  for tower in (t, v):
    if tower.get("hidden_act", "quick_gelu") != "quick_gelu" or \
        abs(tower.get("layer_norm_eps", 1e-5) - 1e-5) > 1e-12:
      raise ValueError("only OpenAI-style CLIP (quick_gelu, LayerNorm eps 1e-5) is supported: "
                       f"hidden_act={tower.get('hidden_act')}, eps={tower.get('layer_norm_eps')}")
  return CLIPConfig(
      embed_dim=d["projection_dim"], image_resolution=v["image_size"],
      vision_layers=v["num_hidden_layers"], vision_width=v["hidden_size"],
      vision_patch_size=v["patch_size"], vision_heads=v["num_attention_heads"],
      context_length=t["max_position_embeddings"], vocab_size=t["vocab_size"],
      transformer_width=t["hidden_size"], transformer_heads=t["num_attention_heads"],
      transformer_layers=t["num_hidden_layers"])


# ---------------------------------------------------------------- file readers (host side)
def load_openai_checkpoint(path: str) -> dict[str, np.ndarray]:
  """Reads `ViT-B-32.pt` (TorchScript archive or plain state_dict) with torch, as float32 numpy."""
  import torch  # optional dependency, only for reading .pt files
  try:
    sd = torch.jit.load(path, map_location="cpu").state_dict()
  except RuntimeError:
    sd = torch.load(path, map_location="cpu", weights_only=True)
  return {k: (v.float().numpy() if v.is_floating_point() else v.numpy()) for k, v in sd.items()}


def load_hf_safetensors(path: str) -> dict[str, np.ndarray]:
  """Reads a `model.safetensors` of `CLIPModel` as numpy (no torch needed)."""
  from safetensors.numpy import load_file
  return load_file(path)
