"""PSR aggregation (evaluation.metrics) and the report's tables, on synthetic similarities."""
import base64
import io

import ml_collections
import numpy as np
import pytest
from PIL import Image

from clip2protect_jax import evaluation, report
from clip2protect_jax.models.face import registry

KINDS = evaluation.IMAGE_KINDS


def small_config(fars=(0.1, 0.01, 0.001)):
  return ml_collections.ConfigDict(dict(
      prompt="red lipstick", protect=dict(mode="impersonation"),
      target=dict(photo="t.jpg", eval_photo="t2.jpg"),
      evaluate=dict(fars=fars, source_references=""),
      fr=dict(surrogates=("irse50",), victims=("mobile_face",))))


def records(target_cos, source_cos):
  """One record per face; every image kind gets the same cosines, per model."""
  return [{"id": f"f{j}", "similarity": {m: {"target": {k: t for k in KINDS},
                                             "source": {k: s for k in KINDS}}
                                         for m in ("irse50", "mobile_face")}}
          for j, (t, s) in enumerate(zip(target_cos, source_cos))]


def test_psr_counts_impersonation_above_and_dodging_at_or_below_the_threshold():
  thr = registry.get("irse50").thresholds[0.01]
  faces = records([thr + 0.1, thr, thr - 0.1, thr + 0.2], [thr - 0.1, thr, thr + 0.1, 1.0])
  m = evaluation.metrics(small_config(), faces, None)
  r = m["models"]["irse50"]["by_image"]["protected"]["far"]["0.01"]
  assert r["threshold"] == pytest.approx(thr)
  assert r["impersonation_psr"] == 0.5      # strictly above: thr + 0.1, thr + 0.2
  assert r["dodging_psr"] == 0.5            # at or below: thr - 0.1, thr
  assert m["models"]["mobile_face"]["role"] == "victim"
  assert m["n_faces"] == 4 and set(m["models"]) == {"irse50", "mobile_face"}


def dlib_eval(target_distance, source_distance):
  return {"threshold": evaluation.DLIB_DISTANCE_THRESHOLD, "faces": {
      f"f{j}": {"target_distance": {k: t for k in KINDS},
                "source_distance": {k: s for k in KINDS}}
      for j, (t, s) in enumerate(zip(target_distance, source_distance))}}


def test_dlib_distances_match_below_the_documented_and_the_calibrated_thresholds():
  calibrated = registry.calibrated().get("dlib", {}).get("thresholds", {})
  if "0.01" not in calibrated:
    pytest.skip("no calibrated dlib thresholds in data/fr_thresholds.json")
  at_far = -calibrated["0.01"]                      # a distance: match when below it
  target = [0.3, 0.6, at_far - 0.01, at_far + 0.01]
  source = [0.3, 0.6, 0.7, 0.59]
  m = evaluation.metrics(small_config(), records([0.0] * 4, [1.0] * 4),
                         dlib_eval(target, source))
  by = m["models"]["dlib"]["by_image"]["protected"]
  documented = by["distance"][str(evaluation.DLIB_DISTANCE_THRESHOLD)]
  assert documented["impersonation_psr"] == np.mean(np.array(target) < 0.6)
  assert documented["dodging_psr"] == 0.5           # 0.6 and 0.7 are >= 0.6
  assert by["far"]["0.01"]["threshold"] == pytest.approx(at_far)
  assert by["far"]["0.01"]["impersonation_psr"] == np.mean(np.array(target) < at_far)


def test_metrics_table_lists_every_threshold_and_survives_no_fars():
  faces = records([0.5] * 2, [0.1] * 2)
  table = report.metrics_table(evaluation.metrics(small_config(), faces,
                                                  dlib_eval([0.5, 0.7], [0.7, 0.7])))
  assert "dist &lt; 0.6 (documented)" in table        # dlib's operating point
  if "0.01" in registry.calibrated().get("dlib", {}).get("thresholds", {}):
    assert "FAR 0.01 (dist &lt;" in table            # and its calibrated FARs beside it
  assert "FAR 0.01 (cos &gt;" in table
  none = evaluation.metrics(small_config(fars=()), faces, dlib_eval([0.5] * 2, [0.7] * 2))
  table = report.metrics_table(none)
  assert "FAR 0" not in table and "dist &lt; 0.6" in table


@pytest.mark.parametrize("shape,size,expected", [((300, 2000, 3), 512, (512, 77)),
                                                 ((64, 64, 3), 256, (256, 256)),
                                                 ((2000, 30, 3), 256, (4, 256))])
def test_report_thumbnails_fit_the_longest_side(shape, size, expected):
  uri = report._data_uri(np.zeros(shape, np.uint8), size)
  img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
  assert img.size == expected
