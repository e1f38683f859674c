"""CLIP: golden parity (ViT-B/32 recipe weights, preprocessing chain), OpenAI converter
strictness, presets vs converter layout, exact token trimming, reduced-precision modes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip2protect_jax import checkpoints, parity
from clip2protect_jax import clip_preprocess as cp
from clip2protect_jax.convert import clip as convert
from clip2protect_jax.convert.common import WeightsMismatchError
from clip2protect_jax.models import clip as clip_model
from clip2protect_jax.models.tokenizer import tokenize
from clip2protect_jax.parity.recipe import load_manifest

GOLDEN = "tests/golden"
TINY = clip_model.CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64,
                             vision_patch_size=8, vision_heads=2, context_length=77,
                             vocab_size=49408, transformer_width=48, transformer_heads=3,
                             transformer_layers=2)


@pytest.fixture(scope="module")
def manifest():
  return load_manifest(GOLDEN)


def random_openai_state_dict(config, seed=0):
  rng = np.random.default_rng(seed)
  return {k: (rng.standard_normal(s) / np.sqrt(max(1, np.prod(s[1:])))).astype(np.float32)
          if len(s) >= 2 else (1 + 0.1 * rng.standard_normal(s)).astype(np.float32)
          for k, s in convert.openai_shapes(config).items()}


@pytest.fixture(scope="module")
def tiny():
  sd = random_openai_state_dict(TINY)
  return sd, convert.convert_openai_state_dict(sd, TINY)


def test_golden_parity(manifest):
  results = parity.run_item("clip", GOLDEN, manifest)
  assert all(r.ok for r in results), "\n".join(r.line() for r in results)
  assert {"image_emb", "text_emb", "tokens", "tokens_extra"} <= {r.output for r in results}


def test_b32_preset_is_the_official_constructor(manifest):
  from clip2protect_jax.parity.clip import config_from_manifest
  assert config_from_manifest(manifest["models"]["clip"]) == clip_model.PRESETS["ViT-B/32"]


def test_golden_parity_float64(manifest):
  with jax.enable_x64(True):
    results = parity.run_item("clip", GOLDEN, manifest, float64=True)
  assert all(r.ok for r in results), "\n".join(r.line() for r in results)
  assert max(r.scaled for r in results if r.output.endswith("_emb")) < 1e-12


def test_golden_preprocess_chain(manifest):
  results = parity.run_item("clip_preprocess", GOLDEN, manifest)
  assert all(r.ok for r in results), "\n".join(r.line() for r in results)
  assert len(results) == 2


def test_preprocess_shapes_quirk_and_gradient():
  rng = np.random.default_rng(0)
  img = jnp.asarray(rng.uniform(0, 1, (1, 300, 400, 3)).astype(np.float32))
  out = cp.clip_preprocess(img, official_shift=False)
  assert out.shape == (1, 224, 224, 3)
  assert cp.resize_short_side_size(300, 400, 224) == (224, 298)
  # A constant image stays constant through bicubic (weights sum to 1) and the crop.
  flat = cp.clip_preprocess(jnp.full((1, 256, 256, 3), 0.25), official_shift=True)
  want = (0.625 - np.asarray(cp.CLIP_MEAN)) / np.asarray(cp.CLIP_STD)
  np.testing.assert_allclose(np.asarray(flat[0, 100, 7]), want, rtol=1e-5)
  g = jax.grad(lambda x: jnp.sum(cp.clip_preprocess(x, official_shift=True)))(img)
  assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).sum()) > 0


def test_converter_rejects_missing_extra_misshaped(tiny):
  sd, _ = tiny
  bad = dict(sd)
  del bad["transformer.resblocks.1.attn.in_proj_weight"]
  with pytest.raises(WeightsMismatchError, match=r"missing.*transformer\.resblocks\.1\.attn\.in_proj_weight"):
    convert.convert_openai_state_dict(bad, TINY)
  bad = dict(sd, **{"visual.transformer.resblocks.2.ln_1.weight": np.ones(64, np.float32)})
  with pytest.raises(WeightsMismatchError, match=r"unexpected.*visual\.transformer\.resblocks\.2\.ln_1\.weight"):
    convert.convert_openai_state_dict(bad, TINY)
  bad = dict(sd, **{"visual.proj": np.zeros((32, 64), np.float32)})
  with pytest.raises(WeightsMismatchError, match=r"mis-shaped: visual\.proj has shape \(32, 64\), expected \(64, 32\)"):
    convert.convert_openai_state_dict(bad, TINY)
  # TorchScript metadata entries are accepted when they agree with the config.
  meta = dict(sd, input_resolution=np.int64(32), context_length=np.int64(77),
              vocab_size=np.int64(49408))
  convert.convert_openai_state_dict(meta, TINY)
  with pytest.raises(ValueError, match="input_resolution=224"):
    convert.convert_openai_state_dict(dict(meta, input_resolution=np.int64(224)), TINY)


def test_converter_splits_qkv_and_transposes(tiny):
  sd, params = tiny
  w = sd["transformer.resblocks.0.attn.in_proj_weight"]
  attn = params["params"]["transformer"]["resblocks_0"]["attn"]
  for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
    np.testing.assert_array_equal(attn[name]["kernel"], w[48 * j:48 * (j + 1)].T)
  np.testing.assert_array_equal(params["params"]["visual"]["conv1"]["kernel"],
                                sd["visual.conv1.weight"].transpose(2, 3, 1, 0))


@pytest.mark.parametrize("preset", list(clip_model.PRESETS))
def test_preset_layout_matches_converter(preset):
  """The converted tree of each preset has exactly the leaves/shapes the module declares.

  Zero-stride arrays stand in for the weights, so ViT-L/14 costs no memory.
  """
  config = clip_model.PRESETS[preset]
  sd = {k: np.broadcast_to(np.float32(0), s) for k, s in convert.openai_shapes(config).items()}
  params = convert.convert_openai_state_dict(sd, config)
  m = clip_model.CLIP(config)
  r = config.image_resolution
  abstract = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, r, r, 3)),
                            jnp.zeros((1, 77), jnp.int32))
  checkpoints.compare_trees(abstract, params, f"CLIP {preset}")


def test_trimmed_tokens_give_identical_text_features(tiny):
  _, params = tiny
  m = clip_model.CLIP(TINY)
  encode = jax.jit(lambda t: m.apply(params, t, method=m.encode_text))
  tokens = tokenize(["face", "a photo of a face with red lipstick."])
  full = np.asarray(encode(tokens))
  trimmed_tokens = clip_model.trim_tokens(tokens)
  assert trimmed_tokens.shape == (2, 11)
  # Equal up to float32 summation order (other matmul shapes).
  np.testing.assert_allclose(np.asarray(encode(trimmed_tokens)), full, rtol=1e-5, atol=1e-5)
  # EOT pooling under the causal mask: a token after EOT changes nothing, one before does.
  after = tokens.copy(); after[0, 5] = 1000
  before = tokens.copy(); before[1, 3] = 1000
  np.testing.assert_array_equal(np.asarray(encode(after))[0], full[0])
  assert np.abs(np.asarray(encode(before))[1] - full[1]).max() > 1e-3


@pytest.fixture(scope="module")
def tiny_inputs_and_fp32(tiny):
  _, params = tiny
  images = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
  tokens = tokenize(["red lipstick", "purple eyeshadow"])
  m = clip_model.CLIP(TINY)
  image_emb, text_emb, _ = jax.jit(m.apply)(params, images, tokens)
  return images, tokens, (np.asarray(image_emb), np.asarray(text_emb))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_reduced_precision_compute(tiny, tiny_inputs_and_fp32, dtype):
  _, params = tiny
  images, tokens, want = tiny_inputs_and_fp32
  low = clip_model.CLIP(TINY, dtype=dtype)
  got = jax.jit(low.apply)(params, images, tokens)
  for name, g, w in zip(("image", "text"), got[:2], want):
    assert g.dtype == dtype
    rel = np.linalg.norm(np.asarray(g, np.float32) - w) / np.linalg.norm(w)
    # Really reduced (not silently fp32), yet close: bf16 has 8 mantissa bits, fp16 11.
    assert 1e-5 < rel < (3e-2 if dtype == jnp.bfloat16 else 5e-3), (name, rel)
