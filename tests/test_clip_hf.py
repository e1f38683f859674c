"""Hugging Face `CLIPModel` -> Flax converter, checked against a randomly initialised
transformers CLIPModel built in PyTorch on CPU (all parameters re-drawn, so LayerNorms,
biases and the class embedding are exercised too)."""
from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the HF-converter test builds a torch CLIPModel")
transformers = pytest.importorskip("transformers", reason="needs transformers' CLIPModel")

from clip2protect_jax.convert import clip as convert  # noqa: E402
from clip2protect_jax.convert.common import WeightsMismatchError  # noqa: E402
from clip2protect_jax.models.clip import CLIP  # noqa: E402
from clip2protect_jax.models.tokenizer import tokenize  # noqa: E402


@pytest.fixture(scope="module")
def hf():
  """(torch model, numpy state_dict, our config) for a small random OpenAI-style CLIP."""
  cfg = transformers.CLIPConfig(
      text_config=dict(vocab_size=49408, hidden_size=64, intermediate_size=256,
                       num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                       bos_token_id=49406, eos_token_id=49407, pad_token_id=0),
      vision_config=dict(hidden_size=96, intermediate_size=384, num_hidden_layers=2,
                         num_attention_heads=3, image_size=64, patch_size=16),
      projection_dim=48)
  torch.manual_seed(0)
  model = transformers.CLIPModel(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.dim() >= 2:
        p.copy_(torch.randn_like(p) / np.sqrt(np.prod(p.shape[1:])))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn_like(p))
      else:
        p.copy_(1 + 0.1 * torch.randn_like(p))
  sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  return model, sd, convert.config_from_hf(cfg)


def _features(output):
  """transformers 5 returns a ModelOutput from get_*_features; 4.x a tensor."""
  return getattr(output, "pooler_output", output).detach().numpy()


def test_hf_converter_matches_torch_clipmodel(hf):
  model, sd, config = hf
  params = convert.convert_hf_state_dict(sd, config)
  images = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
  tokens = tokenize(["a photo of a face with red lipstick.", "purple eyeshadow"])
  with torch.no_grad():
    want_img = _features(model.get_image_features(pixel_values=torch.from_numpy(images)))
    want_txt = _features(model.get_text_features(input_ids=torch.from_numpy(tokens).long()))
  ours = CLIP(config)
  img, txt, _ = jax.jit(ours.apply)(params, images.transpose(0, 2, 3, 1), tokens)
  assert img.shape == (2, 48) and txt.shape == (2, 48)
  for got, want in ((img, want_img), (txt, want_txt)):
    scaled = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
    assert scaled < 5e-5, scaled
  np.testing.assert_allclose(params["params"]["logit_scale"], sd["logit_scale"])


def test_hf_and_openai_layouts_give_identical_params(hf):
  """Renaming HF keys to OpenAI's (q/k/v stacked, projections transposed) and converting
  that must give the very same tree as the HF converter."""
  _, sd, config = hf
  oa = {"logit_scale": sd["logit_scale"],
        "visual.proj": sd["visual_projection.weight"].T,
        "text_projection": sd["text_projection.weight"].T}
  renames = convert._hf_renames(config)
  oa.update({renames[k]: v for k, v in sd.items() if k in renames})
  for hf_prefix, oa_prefix, layers, _ in convert._hf_towers(config):
    for i in range(layers):
      for p, name in (("weight", "in_proj_weight"), ("bias", "in_proj_bias")):
        oa[f"{oa_prefix}.{i}.attn.{name}"] = np.concatenate(
            [sd[f"{hf_prefix}.{i}.self_attn.{x}_proj.{p}"] for x in "qkv"])
  a = convert.convert_hf_state_dict(sd, config)
  b = convert.convert_openai_state_dict(oa, config)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_hf_converter_is_strict(hf):
  _, sd, config = hf
  bad = {k: v for k, v in sd.items() if k != "vision_model.encoder.layers.1.self_attn.k_proj.bias"}
  with pytest.raises(WeightsMismatchError,
                     match=r"missing.*vision_model\.encoder\.layers\.1\.self_attn\.k_proj\.bias"):
    convert.convert_hf_state_dict(bad, config)
  bad = dict(sd, **{"text_model.encoder.layers.2.mlp.fc1.bias": np.zeros(256, np.float32)})
  with pytest.raises(WeightsMismatchError,
                     match=r"unexpected.*text_model\.encoder\.layers\.2\.mlp\.fc1\.bias"):
    convert.convert_hf_state_dict(bad, config)
  bad = dict(sd, **{"visual_projection.weight": sd["visual_projection.weight"].T})
  with pytest.raises(WeightsMismatchError,
                     match=r"mis-shaped: visual_projection\.weight has shape \(96, 48\)"):
    convert.convert_hf_state_dict(bad, config)
  # Older checkpoints carry position_ids buffers: accepted only as 0..n-1.
  with_ids = dict(sd, **{"text_model.embeddings.position_ids": np.arange(77)[None]})
  convert.convert_hf_state_dict(with_ids, config)
  with pytest.raises(ValueError, match="position_ids"):
    convert.convert_hf_state_dict(
        dict(sd, **{"text_model.embeddings.position_ids": np.zeros((1, 77), np.int64)}), config)


def test_config_from_hf_rejects_non_openai_activation(hf):
  cfg = transformers.CLIPConfig(text_config=dict(hidden_act="gelu"))
  with pytest.raises(ValueError, match="quick_gelu"):
    convert.config_from_hf(cfg)
