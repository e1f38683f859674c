"""IR-152 of models/ir152.py (`IR_152((112, 112))`, face.evoLVe), in Flax.

ir152.py's `Backbone(input_size, 152, 'ir')` has the same modules and state_dict names as
irse.py's `Backbone` without SE blocks, and its forward returns the raw BatchNorm1d
output: the embedding is NOT L2-normalised (its norm is large, ~1e9 on random weights).
Dropout(0.4) is off in eval mode.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from clip2protect_jax.models.face.irse import Backbone


def IR152(*, dtype: Any = jnp.float32) -> Backbone:
  """`IR_152((112, 112))`: [N,112,112,3] in [-1,1] -> [N,512], not normalised.

  A 224x224 input gives the `IR_152((224, 224))` variant (Linear 512*14*14 -> 512).
  """
  return Backbone(152, "ir", l2_normalize=False, dtype=dtype)
