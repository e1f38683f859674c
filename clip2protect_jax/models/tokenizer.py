"""OpenAI CLIP byte-level BPE tokenizer (host side, numpy), byte-exact with `clip.tokenize`.

Cleaning as the official code does it: `ftfy.fix_text`, `html.unescape` twice, strip,
collapse whitespace, lower-case; then split with the official `regex` pattern (\\p{L}/\\p{N}
classes, hence the `regex` package), map UTF-8 bytes to printable characters and apply
the BPE merges. Each row is [SOT, ids..., EOT, 0...] of length `context_length` (77).

Vocabulary: `bpe_simple_vocab_16e6.txt.gz` beside this file, vendored unchanged from the
MIT-licensed OpenAI CLIP (as shipped by the PyPI package `clip-anytorch==2.6.0`, file
`clip/bpe_simple_vocab_16e6.txt.gz`, sha256 924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a):

  MIT License. Copyright (c) 2021 OpenAI. Permission is hereby granted, free of charge, to
  any person obtaining a copy of this software and associated documentation files (the
  "Software"), to deal in the Software without restriction, including without limitation
  the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
  copies of the Software, and to permit persons to whom the Software is furnished to do so,
  subject to the following conditions: The above copyright notice and this permission
  notice shall be included in all copies or substantial portions of the Software.
  THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED.
"""
from __future__ import annotations

import functools
import gzip
import html
import os
from typing import Iterable, Sequence

import ftfy
import numpy as np
import regex

VOCAB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "bpe_simple_vocab_16e6.txt.gz")
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_NUM_MERGES = 49152 - 256 - 2  # merges used by the official vocabulary (48894)
_PATTERN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
    r"[^\s\p{L}\p{N}]+", regex.IGNORECASE)


@functools.lru_cache()
def _byte_to_char() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character table, in the official order.

  Printable bytes map to themselves and come first; the other 68 bytes follow in ascending
  order, mapped to chr(256), chr(257), ... The order fixes the first 512 vocabulary ids.
  """
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
               list(range(ord("®"), ord("ÿ") + 1)))
  others = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable},
          **{b: chr(256 + n) for n, b in enumerate(others)}}


def clean_text(text: str) -> str:
  """The official basic_clean + whitespace_clean + lower()."""
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return regex.sub(r"\s+", " ", text).strip().lower()


class SimpleTokenizer:
  """BPE encoder/decoder with the official vocabulary order (ids 0..49407)."""

  def __init__(self, vocab_path: str = VOCAB_PATH):
    with gzip.open(vocab_path) as f:
      lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:_NUM_MERGES + 1]]
    byte_chars = list(_byte_to_char().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += [SOT, EOT]
    self.byte_encoder = _byte_to_char()
    self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
    self.encoder = {tok: i for i, tok in enumerate(vocab)}
    self.decoder = {i: tok for tok, i in self.encoder.items()}
    self.bpe_ranks = {m: i for i, m in enumerate(merges)}
    self.sot_token, self.eot_token = self.encoder[SOT], self.encoder[EOT]
    self._cache = {SOT: SOT, EOT: EOT}

  def bpe(self, token: str) -> str:
    """Applies merges, lowest rank first, to one pre-token; returns space-joined symbols."""
    if token in self._cache:
      return self._cache[token]
    word = list(token[:-1]) + [token[-1] + "</w>"]
    while len(word) > 1:
      pairs = {(a, b) for a, b in zip(word[:-1], word[1:])}
      best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
      if best not in self.bpe_ranks:
        break
      merged, i = [], 0
      while i < len(word):
        if i < len(word) - 1 and word[i] == best[0] and word[i + 1] == best[1]:
          merged.append(word[i] + word[i + 1])
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = merged
    out = " ".join(word)
    self._cache[token] = out
    return out

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` without SOT/EOT."""
    ids = []
    for piece in _PATTERN.findall(clean_text(text)):
      chars = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
      ids.extend(self.encoder[sym] for sym in self.bpe(chars).split(" "))
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    text = "".join(self.decoder[int(i)] for i in ids)
    raw = bytearray(self.byte_decoder[c] for c in text)
    return raw.decode("utf-8", errors="replace").replace("</w>", " ")


@functools.lru_cache()
def default_tokenizer() -> SimpleTokenizer:
  return SimpleTokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = 77, truncate: bool = False,
             tokenizer: SimpleTokenizer | None = None) -> np.ndarray:
  """`clip.tokenize`: int32 (N, context_length) rows [SOT, ids..., EOT, 0, ...].

  Raises ValueError for a text longer than context_length - 2 tokens unless `truncate`,
  which (like the official option) keeps the first context_length tokens and puts EOT last.
  """
  tok = tokenizer or default_tokenizer()
  if isinstance(texts, str):
    texts = [texts]
  out = np.zeros((len(texts), context_length), np.int32)
  for row, text in enumerate(texts):
    ids = [tok.sot_token] + tok.encode(text) + [tok.eot_token]
    if len(ids) > context_length:
      if not truncate:
        raise ValueError(f"input {text!r} is too long for context length {context_length}")
      ids = ids[:context_length]
      ids[-1] = tok.eot_token
    out[row, :len(ids)] = ids
  return out
