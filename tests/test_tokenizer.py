"""OpenAI BPE tokenizer: exact ids on the golden strings, a random-unicode property test
against the reference `ftfy` + `regex` tokenizer, and the row layout of `tokenize`."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from clip2protect_jax.models import tokenizer as T
from clip2protect_jax.parity.recipe import load_arrays

GOLDEN = "tests/golden"


@pytest.fixture(scope="module")
def golden():
  return load_arrays(GOLDEN, "clip.npz")


@pytest.fixture(scope="module")
def reference():
  """The official SimpleTokenizer as shipped by the PyPI package clip-anytorch (MIT).

  Its `simple_tokenizer.py` is loaded by path: the package's __init__ would import torch.
  """
  spec = importlib.util.find_spec("clip")
  path = spec and spec.submodule_search_locations and os.path.join(
      spec.submodule_search_locations[0], "simple_tokenizer.py")
  if not path or not os.path.exists(path):
    pytest.skip("reference tokenizer absent: pip install --no-deps clip-anytorch==2.6.0")
  mod_spec = importlib.util.spec_from_file_location("_reference_simple_tokenizer", path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  return mod.SimpleTokenizer()


def test_golden_token_ids(golden):
  with open(os.path.join(GOLDEN, "text_templates.json")) as f:
    templates = json.load(f)
  cases = {"tokens": list(golden["prompts"]), "tokens_extra": list(golden["extra_strings"]),
           "tokens_templates_face": [t.format("face") for t in templates],
           "tokens_templates_red_lipstick": [t.format("red lipstick") for t in templates]}
  for name, strings in cases.items():
    ours = T.tokenize([str(s) for s in strings])
    assert ours.dtype == np.int32
    np.testing.assert_array_equal(ours, golden[name], err_msg=name)


def _random_strings(n: int, seed: int) -> list[str]:
  """Mixed scripts, whitespace, entities, mojibake, emoji, combining marks, random BMP."""
  rng = np.random.default_rng(seed)
  pools = [
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
      " \t\n\r\u00a0\u2009\u3000  ", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
      "éèêëàâäôöûüçñßøåæœÉÀÇÑ", "\u0301\u0308\u0327", "日本語中文字漢字한국어", "абвгдежзЖЯ",
      "مرحبا", "😀😃👍🏽🇺🇸👩‍👩‍👧❤️", "\u200b\u200d\ufeff\u00ad",
  ]
  chunks = ["&amp;", "&lt;", "&#39;", "&quot;", "&amp;amp;", "'s", "'ll", "'RE", "Ã©", "â€™",
            "<|endoftext|>", "<|startoftext|>", "lipstick", "eyeshadow", "1234567"]
  out = []
  for _ in range(n):
    parts = []
    for _ in range(int(rng.integers(0, 12))):
      r = rng.random()
      if r < 0.15:
        parts.append(str(rng.choice(chunks)))
      elif r < 0.25:
        cp = int(rng.integers(0x20, 0xD7FF))
        parts.append(chr(cp))
      else:
        pool = pools[int(rng.integers(len(pools)))]
        parts.append("".join(rng.choice(list(pool), int(rng.integers(1, 6)))))
    out.append("".join(parts))
  return out


def test_random_unicode_matches_reference(reference):
  ours = T.default_tokenizer()
  strings = _random_strings(2000, seed=0)
  for s in strings:
    assert ours.encode(s) == reference.encode(s), repr(s)
  # The property is not vacuous: many strings give long, multi-symbol encodings.
  assert sum(len(ours.encode(s)) > 10 for s in strings) > 500


def test_vocabulary_matches_reference(reference):
  ours = T.default_tokenizer()
  assert ours.encoder == reference.encoder
  assert ours.bpe_ranks == reference.bpe_ranks


def test_row_layout_and_truncation():
  tok = T.default_tokenizer()
  rows = T.tokenize(["face", "", "a photo of a face with red lipstick."])
  assert rows.shape == (3, 77)
  assert (rows[:, 0] == 49406).all()
  eot = rows.argmax(axis=1)
  assert (rows[np.arange(3), eot] == 49407).all()
  assert list(eot) == [2, 1, 10]
  assert all((rows[i, eot[i] + 1:] == 0).all() for i in range(3))
  long = "face " * 80
  with pytest.raises(ValueError, match="too long"):
    T.tokenize(long)
  cut = T.tokenize(long, truncate=True)[0]
  assert cut[-1] == 49407 and cut[0] == 49406 and (cut[1:-1] == tok.encode("face")[0]).all()
  ab = tok.encode("a b")
  assert len(ab) == 2 and ab[0] == 320  # "a</w>"
  assert T.tokenize("a b", context_length=4).tolist() == [[49406, *ab, 49407]]


def test_decode_roundtrip_of_clean_text():
  tok = T.default_tokenizer()
  for s in ["red lipstick", "naïve façade 日本語", "don't stop-believing..."]:
    words = tok.decode(tok.encode(s)).split()
    assert "".join(words) == "".join(T.clean_text(s).split())
