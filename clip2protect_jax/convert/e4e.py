"""e4e checkpoint (`e4e_ffhq_encode.pt`) -> Flax params of models/e4e.Encoder4Editing.

The official checkpoint is a dict: `state_dict` (encoder entries under the prefix
`encoder.`, plus `decoder.*` and others we ignore), `latent_avg` (an (18, 512) tensor, all
rows equal) and `opts`. The encoder entries, with `encoder.` stripped, are mapped strictly
(every missing, unexpected or mis-shaped key is named) with the generic torch-name scheme
of convert/face.py: the expected keys come from the Flax module, never from the input.

  python tools/convert_checkpoint.py --kind=e4e --input=e4e_ffhq_encode.pt \
      --output=checkpoints/e4e_ffhq_encode

writes an orbax checkpoint {"params", "latent_avg"} + metadata.json (checkpoints.py).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from clip2protect_jax.convert.common import WeightsMismatchError
from clip2protect_jax.convert.face import convert_module, torch_layout
from clip2protect_jax.models.e4e import Encoder4Editing, n_styles

PREFIX = "encoder."
INPUT_HW = (256, 256)


def expected_torch_shapes(stylegan_size: int = 1024) -> dict[str, tuple[int, ...]]:
  """Every module-local key (with torch shape) of Encoder4Editing(50, 'ir_se') at this size."""
  return {k: v[1] for k, v in torch_layout(Encoder4Editing(stylegan_size), INPUT_HW).items()}


def convert_encoder(state_dict: Mapping[str, Any], stylegan_size: int = 1024,
                    source: str = "e4e encoder") -> dict[str, Any]:
  """Module-local encoder state_dict (no `encoder.` prefix) -> nested numpy params."""
  return convert_module(Encoder4Editing(stylegan_size), INPUT_HW, state_dict,
                        f"{source} (Encoder4Editing(50, 'ir_se'), stylegan_size "
                        f"{stylegan_size})")


def strip_prefix(full_state_dict: Mapping[str, Any], source: str) -> dict[str, Any]:
  """Entries of a pSp state_dict whose key starts with `encoder.`, prefix removed."""
  out = {k[len(PREFIX):]: v for k, v in full_state_dict.items() if k.startswith(PREFIX)}
  if not out:
    raise WeightsMismatchError(
        f"{source}: no key starts with {PREFIX!r} in ckpt['state_dict'] (found e.g. "
        f"{sorted(full_state_dict)[:3]}). Is this an e4e/pSp checkpoint?")
  return out


def latent_avg_rows(latent_avg: Any, stylegan_size: int, source: str) -> np.ndarray:
  """ckpt['latent_avg'] ((R, 512) or (512,)) -> float32 (R, 512), R = n_styles(size)."""
  rows = n_styles(stylegan_size)
  a = np.asarray(latent_avg, np.float32)
  if a.shape == (512,):
    a = np.broadcast_to(a, (rows, 512)).copy()
  if a.shape != (rows, 512):
    raise WeightsMismatchError(
        f"{source}: latent_avg has shape {a.shape}, expected ({rows}, 512) or (512,) for a "
        f"{stylegan_size} generator.")
  return a


def convert_checkpoint(ckpt: Mapping[str, Any], source: str = "e4e checkpoint",
                       latent_avg: Any = None) -> dict[str, Any]:
  """Loaded e4e checkpoint (numpy leaves) -> {"params": ..., "latent_avg": (R, 512)}.

  `latent_avg` overrides / supplies the average latent when the checkpoint has none (the
  official fallback is the generator's mean latent of 10000 samples).
  """
  if "state_dict" not in ckpt:
    raise WeightsMismatchError(f"{source}: no 'state_dict' key (keys: {sorted(ckpt)}). "
                               "Expected the e4e training checkpoint e4e_ffhq_encode.pt.")
  opts = ckpt.get("opts") or {}
  size = int(opts.get("stylegan_size", 1024)) if isinstance(opts, Mapping) else 1024
  enc_type = opts.get("encoder_type") if isinstance(opts, Mapping) else None
  if enc_type not in (None, "Encoder4Editing"):
    raise WeightsMismatchError(f"{source}: opts.encoder_type={enc_type!r}; only "
                               "Encoder4Editing is supported.")
  params = convert_encoder(strip_prefix(ckpt["state_dict"], source), size, source)
  if latent_avg is None:
    if "latent_avg" not in ckpt:
      raise WeightsMismatchError(
          f"{source}: no 'latent_avg'. Pass latent_avg= (e.g. the generator's mean latent).")
    latent_avg = ckpt["latent_avg"]
  return {"params": params, "latent_avg": latent_avg_rows(latent_avg, size, source),
          "stylegan_size": size}


def abstract_tree(stylegan_size: int = 1024) -> dict[str, Any]:
  """Shapes/dtypes of the stored tree, for checkpoints.restore."""
  model = Encoder4Editing(stylegan_size)
  x = jax.ShapeDtypeStruct((1, *INPUT_HW, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
  return {"params": params,
          "latent_avg": jax.ShapeDtypeStruct((n_styles(stylegan_size), 512), jnp.float32)}


def load_converted(path: str) -> tuple[Encoder4Editing, dict[str, Any], np.ndarray]:
  """(model, params, latent_avg (R, 512)) from a folder written by
  `tools/convert_checkpoint.py --kind=e4e`."""
  from clip2protect_jax import checkpoints
  meta = checkpoints.load_metadata(path)
  if meta.get("kind") != "e4e":
    raise WeightsMismatchError(f"{path}: metadata kind {meta.get('kind')!r} is not 'e4e'.")
  size = int(meta["stylegan_size"])
  tree = checkpoints.restore(path, abstract_tree(size))
  return Encoder4Editing(size), tree["params"], np.asarray(tree["latent_avg"])

