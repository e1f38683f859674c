"""Strict key/shape checks shared by every converter and checkpoint restore."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np


class WeightsMismatchError(ValueError):
  """Weights do not fit the architecture; the message names every offending key."""


def format_mismatch(source: str, missing: Iterable[str], unexpected: Iterable[str],
                    misshaped: Iterable[tuple[str, Any, Any]], hint: str = "") -> str:
  """One readable message listing missing, unexpected and mis-shaped keys."""
  lines = [f"{source}: weights do not match the architecture."]
  missing, unexpected, misshaped = sorted(missing), sorted(unexpected), sorted(misshaped)
  if missing:
    lines.append(f"  missing ({len(missing)}): " + ", ".join(missing))
  if unexpected:
    lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected))
  for name, got, want in misshaped:
    lines.append(f"  mis-shaped: {name} has shape {tuple(got)}, expected {tuple(want)}")
  if hint:
    lines.append("  " + hint)
  return "\n".join(lines)


def check_state_dict(state_dict: Mapping[str, Any], expected_shapes: Mapping[str, tuple],
                     source: str, hint: str = "") -> None:
  """Raises WeightsMismatchError unless `state_dict` has exactly the expected keys/shapes.
  BatchNorm's `num_batches_tracked` counters may be absent: files saved before torch 0.4.1
  have none, and torch's strict load_state_dict accepts that (their values are unused)."""
  missing = {k for k in set(expected_shapes) - set(state_dict)
             if not k.endswith(".num_batches_tracked")}
  unexpected = set(state_dict) - set(expected_shapes)
  misshaped = [(k, np.shape(state_dict[k]), tuple(expected_shapes[k]))
               for k in set(expected_shapes) & set(state_dict)
               if tuple(np.shape(state_dict[k])) != tuple(expected_shapes[k])]
  if missing or unexpected or misshaped:
    raise WeightsMismatchError(
        format_mismatch(source, missing, unexpected, misshaped, hint))


def as_float32(x: Any) -> np.ndarray:
  return np.asarray(x, dtype=np.float32)


def conv_oihw_to_hwio(w: Any) -> np.ndarray:
  """torch Conv2d weight (O, I, kh, kw) -> flax/lax HWIO (kh, kw, I, O)."""
  return np.transpose(as_float32(w), (2, 3, 1, 0))


def linear_to_dense(w: Any) -> np.ndarray:
  """torch Linear weight (out, in) -> flax Dense kernel (in, out)."""
  return np.transpose(as_float32(w))


def torch_load_failure(e: Exception) -> str:
  """Why a torch.load(..., weights_only=True) failed, in one line, without torch's advice to
  retry with weights_only=False (which runs whatever code the file holds)."""
  text = str(e).strip()
  if "WeightsUnpickler error:" in text:   # most unpickling failures: the reason follows
    reason = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
    reason = " ".join(reason.split()).split(". ")[0].rstrip(".")
    return (f"{type(e).__name__}: {reason or 'unpickling failed'}: not a file of tensors "
            "saved by torch.save (truncated, another format, or Python objects a safe load "
            "refuses)")
  if "weights_only" in text or "Weights only" in text:   # e.g. a blocked module's global
    return (f"{type(e).__name__}: it holds Python objects (e.g. functions of blocked "
            "modules) that a safe load (weights_only=True) refuses")
  return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__
