"""Face-verification thresholds at FAR 0.1 / 0.01 / 0.001 from labelled photo pairs.

  python tools/calibrate_thresholds.py --photos=../shared/faces/deepface \
      [--models=dlib_resnet,faceres,mobileface,dlib] [--write]

Identities are the connected components of the "same person" pairs in the label CSVs
(every *.csv in --photos by default: columns file_x, file_y, Decision|decision). Every pair
of photos from two different identities is an impostor pair, every pair inside one
identity a genuine pair. Each photo's largest dlib face is embedded once per model (the
model's own alignment); `dlib` is dlib's C++ descriptor, scored by euclidean distance.
The threshold at FAR f is the lowest one that at most floor(f * N) of the N impostor pairs
exceed; the table gives the false accepts behind it, a 95% Clopper-Pearson interval of
the true FAR at that threshold, and the genuine accept rate (TAR). --write stores the
values with their provenance in clip2protect_jax/data/fr_thresholds.json, which the FR
registry reads.
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("photos", "../shared/faces/deepface", "folder of photos + label CSVs")
flags.DEFINE_list("labels", [], "label CSVs (default: every *.csv in --photos)")
flags.DEFINE_list("models", ["dlib_resnet", "faceres", "mobileface", "dlib"],
                  "registry models and/or 'dlib' (the C++ descriptor)")
flags.DEFINE_string("weights_dir", "checkpoints", "folder holding each model's weights")
flags.DEFINE_list("fars", ["0.1", "0.01", "0.001"], "false-accept rates")
flags.DEFINE_string("dataset_note", "serengil/deepface test fixtures",
                    "where the photos come from, stored with the thresholds")
flags.DEFINE_bool("write", False, "store the thresholds in the registry's data file")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax
  import numpy as np

  from clip2protect_jax import calibration, pipeline, weights
  from clip2protect_jax.models.face import registry

  if not os.path.isdir(FLAGS.photos):
    raise SystemExit(f"--photos={FLAGS.photos}: no such folder")
  csvs = FLAGS.labels or sorted(glob.glob(os.path.join(FLAGS.photos, "*.csv")))
  if not csvs:
    raise SystemExit(f"no label CSVs in {FLAGS.photos}; pass --labels")
  ident = calibration.identities(calibration.read_pair_labels(csvs))
  missing = [f for f in ident if not os.path.isfile(os.path.join(FLAGS.photos, f))]
  if missing:
    raise SystemExit(f"labelled photos missing from {FLAGS.photos}: {missing[:10]}")
  genuine, impostor = calibration.all_pairs(ident)
  if not genuine or not impostor:
    raise SystemExit(f"{len(genuine)} genuine and {len(impostor)} impostor pairs in the "
                     f"labels of {FLAGS.photos}: calibration needs both, i.e. at least two "
                     "identities with two or more labelled photos each")
  fars = [float(f) for f in FLAGS.fars]
  if not all(0 <= f < 1 for f in fars):
    raise SystemExit(f"--fars={','.join(FLAGS.fars)}: each must be a rate in [0, 1) "
                     "(1% is 0.01)")
  files = sorted({f for pair in genuine + impostor for f in pair})
  n_ids = len({ident[f] for f in files})
  print(f"{len(files)} photos, {n_ids} identities, {len(genuine)} genuine and "
        f"{len(impostor)} impostor pairs (labels: {', '.join(map(os.path.basename, csvs))})")

  params = {}
  for i, name in enumerate(m for m in FLAGS.models if m != calibration.DLIB):
    spec = registry.get(name)
    params[name], desc = weights.load_face_model(
        name, os.path.join(FLAGS.weights_dir, spec.weights_subdir or name),
        jax.random.fold_in(jax.random.key(0), i))
    if "RANDOM" in desc:
      raise SystemExit(f"{name}: no weights in {FLAGS.weights_dir}; calibrating random "
                       "weights means nothing")
  emb = pipeline.photo_embeddings(FLAGS.models, params,
                                  {f: os.path.join(FLAGS.photos, f) for f in files})

  command = "python tools/calibrate_thresholds.py " + " ".join(sys.argv[1:])
  entries = {}
  print("\n| model | FAR | threshold | false accepts / impostor pairs | 95% CI of FAR | TAR |"
        "\n|---|---|---|---|---|---|")
  for name in FLAGS.models:
    imp = calibration.pair_scores(name, emb[name], impostor)
    gen = calibration.pair_scores(name, emb[name], genuine)
    rows = [calibration.threshold_at_far(imp, gen, f) for f in fars]
    for t in rows:
      shown = f"distance < {-t.value:.4f}" if name == calibration.DLIB else f"cos > {t.value:.4f}"
      print(f"| {name} | {t.far:g} | {shown} | {t.false_accepts} / {t.impostor_pairs} | "
            f"[{t.ci95[0]:.4f}, {t.ci95[1]:.4f}] | {t.tar:.3f} |")
    entries[name] = {
        "metric": "neg_euclidean" if name == calibration.DLIB else "cosine",
        "thresholds": {f"{t.far:g}": round(t.value, 6) for t in rows},
        "false_accepts": {f"{t.far:g}": t.false_accepts for t in rows},
        "far_ci95": {f"{t.far:g}": [round(v, 6) for v in t.ci95] for t in rows},
        "tar": {f"{t.far:g}": round(t.tar, 4) for t in rows},
        "impostor_pairs": len(impostor), "genuine_pairs": len(genuine), "photos": len(files),
        "identities": n_ids, "dataset": f"{os.path.basename(os.path.normpath(FLAGS.photos))}"
        f" ({FLAGS.dataset_note}; labels {', '.join(map(os.path.basename, csvs))})",
        "command": command, "date": datetime.date.today().isoformat(),
        "genuine_score_median": round(float(np.median(gen)), 4),
        "impostor_score_median": round(float(np.median(imp)), 4),
    }
  if FLAGS.write:
    path = registry.CALIBRATED_THRESHOLDS
    data = {"models": {}}
    if os.path.isfile(path):
      with open(path) as f:
        data = json.load(f)
    data["models"].update(entries)
    data["note"] = ("Written by tools/calibrate_thresholds.py. Scores: cosine, or minus the "
                    "euclidean distance (dlib); accept when score > threshold. With N impostor "
                    "pairs, the FAR-0.001 value rests on floor(N/1000) pairs: see far_ci95.")
    with open(path + ".tmp", "w") as f:
      json.dump(data, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
    print(f"\nwrote {path}")
    kept = [n for n in entries if n != calibration.DLIB
            and registry.get(n).threshold_source == registry.AMT_GAN_THRESHOLDS]
    if kept:
      print(f"note: {', '.join(kept)} keep {registry.AMT_GAN_THRESHOLDS}, as the paper's "
            "numbers do; their values written here are for reference only")


if __name__ == "__main__":
  app.run(main)
