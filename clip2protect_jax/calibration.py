"""Labelled face photos: identities from pair labels, pair scores, FAR thresholds.

Used by tools/calibrate_thresholds.py (thresholds at FAR 0.1 / 0.01 / 0.001 from impostor
pairs) and tools/transfer_benchmark.py (source/target identities). Scores are similarities:
cosine for the registry models, minus the euclidean distance for dlib's C++ descriptor
(`DLIB`), so "accept" is always score > threshold.
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
import os
from typing import Iterable, Mapping, Sequence

import numpy as np
import scipy.stats

from clip2protect_jax.evaluation import DLIB  # the C++ descriptor: score = -distance


# ------------------------------------------------------------------ labels

def read_pair_labels(csv_paths: Iterable[str]) -> list[tuple[str, str, bool]]:
  """(file_x, file_y, same person) from CSVs with columns file_x, file_y, Decision|decision
  (Yes/No); file names are reduced to their base name (deepface's fixtures prefix paths)."""
  pairs = []
  for path in csv_paths:
    with open(path, newline="") as f:
      for row in csv.DictReader(f):
        decision = row.get("Decision", row.get("decision"))
        if decision not in ("Yes", "No"):
          raise ValueError(f"{path}: row {row} has decision {decision!r}, expected Yes/No")
        pairs.append((os.path.basename(row["file_x"]), os.path.basename(row["file_y"]),
                      decision == "Yes"))
  return pairs


def identities(pairs: Sequence[tuple[str, str, bool]]) -> dict[str, int]:
  """file -> identity index: connected components of the same-person pairs. Raises if a
  different-person pair falls inside one component (contradictory labels)."""
  parent: dict[str, str] = {}

  def root(a):
    parent.setdefault(a, a)
    while parent[a] != a:
      parent[a] = parent[parent[a]]
      a = parent[a]
    return a

  for x, y, same in pairs:
    rx, ry = root(x), root(y)
    if same:
      parent[rx] = ry
  bad = [(x, y) for x, y, same in pairs if not same and root(x) == root(y)]
  if bad:
    raise ValueError(f"contradictory labels: {bad[:5]} are 'No' pairs inside one identity")
  roots = sorted({root(a) for a in parent})
  return {a: roots.index(root(a)) for a in sorted(parent)}


def all_pairs(ident: Mapping[str, int]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
  """(genuine pairs, impostor pairs) over every pair of labelled photos; photos whose
  identity is a singleton are left out (nothing proves they differ from the others)."""
  counts: dict[int, int] = {}
  for i in ident.values():
    counts[i] = counts.get(i, 0) + 1
  files = sorted(f for f, i in ident.items() if counts[i] > 1)
  genuine, impostor = [], []
  for a, b in itertools.combinations(files, 2):
    (genuine if ident[a] == ident[b] else impostor).append((a, b))
  return genuine, impostor


# ------------------------------------------------------------------ thresholds

@dataclasses.dataclass(frozen=True)
class Threshold:
  far: float                # requested false-accept rate
  value: float              # accept when score > value
  false_accepts: int        # impostor pairs above it
  impostor_pairs: int
  ci95: tuple[float, float]  # Clopper-Pearson interval of the true FAR at this threshold
  tar: float                # genuine pairs above it / genuine pairs


def threshold_at_far(impostor: np.ndarray, genuine: np.ndarray, far: float) -> Threshold:
  """The lowest threshold whose empirical FAR is <= far: the (k+1)-th highest impostor
  score, k = floor(far * N). With N impostor pairs, FAR = 0.001 rests on floor(N / 1000)
  pairs: its 95% interval says how little that pins down."""
  if not 0 <= far < 1:
    raise ValueError(f"FAR {far} is not a rate in [0, 1) (1% is 0.01)")
  imp = np.sort(np.asarray(impostor, np.float64))[::-1]
  n = len(imp)
  if n == 0:
    raise ValueError("no impostor pairs: need photos of at least two identities")
  k = min(int(np.floor(far * n)), n - 1)
  value = float(imp[k])
  fa = int(np.sum(imp > value))
  lo = 0.0 if fa == 0 else float(scipy.stats.beta.ppf(0.025, fa, n - fa + 1))
  hi = float(scipy.stats.beta.ppf(0.975, fa + 1, n - fa)) if fa < n else 1.0
  tar = float(np.mean(np.asarray(genuine) > value)) if len(genuine) else float("nan")
  return Threshold(far, value, fa, n, (lo, hi), tar)


# ------------------------------------------------------------------ scores

def pair_scores(name: str, emb: Mapping[str, np.ndarray], pairs: Sequence[tuple[str, str]]
                ) -> np.ndarray:
  """Similarity of each pair: cosine, or -euclidean distance for DLIB."""
  a = np.stack([emb[x] for x, _ in pairs]).astype(np.float64)
  b = np.stack([emb[y] for _, y in pairs]).astype(np.float64)
  if name == DLIB:
    return -np.linalg.norm(a - b, axis=1)
  a /= np.linalg.norm(a, axis=1, keepdims=True)
  b /= np.linalg.norm(b, axis=1, keepdims=True)
  return np.sum(a * b, axis=1)
