"""rosinality StyleGAN2 `g_ema` state_dict -> Flax params of `models.stylegan2.Generator`.

Renamings (torch -> flax), every weight kept RAW (equalized-lr scales are applied at
run time by the modules, exactly as in torch):
  style.{i}.weight (out, in)              -> style/dense_{i}/weight (in, out)   [.T]
  input.input (1, C, 4, 4)                -> synthesis/input (4, 4, C)
  X.conv.weight (1, O, I, k, k)           -> synthesis/X/conv/weight (k, k, I, O)  [OIHW->HWIO]
  X.conv.modulation.weight (I, style_dim) -> synthesis/X/conv/modulation/weight (style_dim, I)
  X.noise.weight (1,), X.activate.bias    -> synthesis/X/noise_weight, X/activate_bias
  to_rgb*.bias (1, 3, 1, 1)               -> synthesis/to_rgb*/bias (3,)
  X = conv1 | convs_{j} | to_rgb1 | to_rgbs_{b}   (torch dots become underscores)
Buffers: `noises.noise_{i}` (1, 1, r, r) -> noise map i (1, r, r, 1), returned separately;
the FIR buffers (`*.blur.kernel`, `*.upsample.kernel`) must equal the kernel the module
derives from `blur_kernel`, else the checkpoint belongs to another architecture.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from clip2protect_jax.convert.common import (WeightsMismatchError, as_float32,
                                             check_state_dict, linear_to_dense)
from clip2protect_jax.models.layers import make_blur_kernel
from clip2protect_jax.models.stylegan2 import (channels_at, log2_size, noise_shapes,
                                               num_noise_maps)


def _layers(size: int, cm: int, cmax: int) -> list[tuple[str, str, int, int, int, bool]]:
  """(torch prefix, flax name, in_ch, out_ch, kernel, upsample) of every modulated layer."""
  in_ch = channels_at(4, cm, cmax)
  layers = [("conv1", "conv1", in_ch, in_ch, 3, False),
            ("to_rgb1", "to_rgb1", in_ch, 3, 1, False)]
  for block in range(log2_size(size) - 2):
    ch = channels_at(2 ** (block + 3), cm, cmax)
    layers += [(f"convs.{2 * block}", f"convs_{2 * block}", in_ch, ch, 3, True),
               (f"convs.{2 * block + 1}", f"convs_{2 * block + 1}", ch, ch, 3, False),
               (f"to_rgbs.{block}", f"to_rgbs_{block}", ch, 3, 1, False)]
    in_ch = ch
  return layers


def expected_shapes(size: int, style_dim: int = 512, n_mlp: int = 8,
                    channel_multiplier: int = 2, channel_max: int = 512,
                    blur_kernel_size: int = 4) -> dict[str, tuple[int, ...]]:
  """Every key of the torch `Generator(size, ...)` state_dict with its shape."""
  shapes: dict[str, tuple[int, ...]] = {}
  for i in range(1, n_mlp + 1):
    shapes[f"style.{i}.weight"] = (style_dim, style_dim)
    shapes[f"style.{i}.bias"] = (style_dim,)
  shapes["input.input"] = (1, channels_at(4, channel_multiplier, channel_max), 4, 4)
  for torch_name, _, in_ch, out_ch, k, upsample in _layers(size, channel_multiplier,
                                                           channel_max):
    shapes[f"{torch_name}.conv.weight"] = (1, out_ch, in_ch, k, k)
    shapes[f"{torch_name}.conv.modulation.weight"] = (in_ch, style_dim)
    shapes[f"{torch_name}.conv.modulation.bias"] = (in_ch,)
    if out_ch == 3:  # ToRGB
      shapes[f"{torch_name}.bias"] = (1, 3, 1, 1)
      if torch_name != "to_rgb1":
        shapes[f"{torch_name}.upsample.kernel"] = (blur_kernel_size,) * 2
    else:
      shapes[f"{torch_name}.noise.weight"] = (1,)
      shapes[f"{torch_name}.activate.bias"] = (out_ch,)
      if upsample:
        shapes[f"{torch_name}.conv.blur.kernel"] = (blur_kernel_size,) * 2
  for i, (_, r, _, _) in enumerate(noise_shapes(size)):
    shapes[f"noises.noise_{i}"] = (1, 1, r, r)
  return shapes


def _check_fir_buffers(state_dict: Mapping[str, Any], blur_kernel, source: str) -> None:
  expected = make_blur_kernel(blur_kernel) * 4  # both FIR buffers are scaled by factor**2
  for name, value in state_dict.items():
    if name.endswith((".blur.kernel", ".upsample.kernel")):
      if not np.allclose(np.asarray(value, np.float64), expected, rtol=1e-6, atol=1e-7):
        raise WeightsMismatchError(
            f"{source}: FIR buffer {name} is {np.asarray(value).tolist()}, expected the "
            f"kernel of blur_kernel={list(blur_kernel)}; set generator.blur_kernel to match.")


def convert_generator(state_dict: Mapping[str, Any], *, size: int, style_dim: int = 512,
                      n_mlp: int = 8, channel_multiplier: int = 2, channel_max: int = 512,
                      blur_kernel=(1, 3, 3, 1), source: str = "StyleGAN2 state_dict"
                      ) -> tuple[dict[str, Any], list[np.ndarray]]:
  """torch `g_ema` state_dict (numpy values) -> (flax params, noise buffers [1, r, r, 1])."""
  check_state_dict(
      state_dict, expected_shapes(size, style_dim, n_mlp, channel_multiplier, channel_max,
                                  len(blur_kernel)), source,
      hint=f"expected rosinality Generator({size}, {style_dim}, {n_mlp}, "
           f"channel_multiplier={channel_multiplier}); for a full checkpoint pass "
           "ckpt['g_ema'].")
  _check_fir_buffers(state_dict, blur_kernel, source)
  sd = state_dict
  style = {f"dense_{i}": {"weight": linear_to_dense(sd[f"style.{i}.weight"]),
                          "bias": as_float32(sd[f"style.{i}.bias"])}
           for i in range(1, n_mlp + 1)}
  synthesis: dict[str, Any] = {
      "input": np.transpose(as_float32(sd["input.input"])[0], (1, 2, 0))}
  for torch_name, flax_name, _, out_ch, _, _ in _layers(size, channel_multiplier,
                                                        channel_max):
    conv = {"weight": np.transpose(as_float32(sd[f"{torch_name}.conv.weight"])[0],
                                   (2, 3, 1, 0)),
            "modulation": {
                "weight": linear_to_dense(sd[f"{torch_name}.conv.modulation.weight"]),
                "bias": as_float32(sd[f"{torch_name}.conv.modulation.bias"])}}
    if out_ch == 3:
      synthesis[flax_name] = {"conv": conv,
                              "bias": as_float32(sd[f"{torch_name}.bias"]).reshape(3)}
    else:
      synthesis[flax_name] = {"conv": conv,
                              "noise_weight": as_float32(sd[f"{torch_name}.noise.weight"]),
                              "activate_bias": as_float32(sd[f"{torch_name}.activate.bias"])}
  noise = [np.transpose(as_float32(sd[f"noises.noise_{i}"]), (0, 2, 3, 1))
           for i in range(num_noise_maps(size))]
  return {"style": style, "synthesis": synthesis}, noise
