"""calibration: identities from pair labels, impostor pairs, thresholds at a FAR."""
from __future__ import annotations

import numpy as np
import pytest

from clip2protect_jax import calibration
from clip2protect_jax.models.face import registry


def test_identities_are_components_of_same_person_pairs(tmp_path):
  path = tmp_path / "pairs.csv"
  path.write_text("file_x,file_y,Decision\na.jpg,b.jpg,Yes\nb.jpg,c.jpg,Yes\n"
                  "d.jpg,e.jpg,Yes\na.jpg,d.jpg,No\nx/f.jpg,g.jpg,No\n")
  pairs = calibration.read_pair_labels([str(path)])
  ident = calibration.identities(pairs)
  assert ident["a.jpg"] == ident["c.jpg"] != ident["d.jpg"] == ident["e.jpg"]
  genuine, impostor = calibration.all_pairs(ident)
  assert len(genuine) == 3 + 1 and len(impostor) == 3 * 2   # f, g: singletons, left out
  assert all(ident[a] != ident[b] for a, b in impostor)
  with pytest.raises(ValueError, match="contradictory"):
    calibration.identities(pairs + [("a.jpg", "c.jpg", False)])


def test_threshold_at_far_counts_false_accepts_and_bounds_them():
  impostor = np.linspace(0.0, 1.0, 1000)   # 1000 impostor scores
  genuine = np.array([0.995, 0.999, 0.5])
  t = calibration.threshold_at_far(impostor, genuine, 0.01)
  assert t.false_accepts == 10 and t.value == pytest.approx(impostor[-11])
  assert t.ci95[0] < 0.01 < t.ci95[1] and t.tar == pytest.approx(2 / 3)
  few = calibration.threshold_at_far(impostor[:500], genuine, 0.001)  # floor(0.5) = 0
  assert few.false_accepts == 0 and few.value == pytest.approx(impostor[499])
  assert few.ci95[0] == 0.0 and few.ci95[1] > 0.005   # 0 of 500 says little about 0.001
  for not_a_rate in (-0.01, 1.0, 10.0):   # e.g. 1 meaning 1%: would return a wrong value
    with pytest.raises(ValueError, match="not a rate"):
      calibration.threshold_at_far(impostor, genuine, not_a_rate)


def test_dlib_scores_are_negative_distances():
  emb = {"a": np.zeros(3), "b": np.array([0.0, 3.0, 4.0])}
  assert calibration.pair_scores(calibration.DLIB, emb, [("a", "b")])[0] == -5.0


def test_registry_reads_the_stored_calibration():
  stored = registry.calibrated()
  for name in ("dlib_resnet", "faceres", "mobileface", "dlib"):
    entry = stored[name]
    assert set(entry["thresholds"]) == {"0.1", "0.01", "0.001"}
    assert entry["impostor_pairs"] > 1000 and "calibrate_thresholds" in entry["command"]
  for name in ("dlib_resnet", "faceres", "mobileface"):
    spec = registry.get(name)
    assert spec.thresholds[0.1] < spec.thresholds[0.01] < spec.thresholds[0.001]
    assert "impostor pairs" in spec.threshold_source
