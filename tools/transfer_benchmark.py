"""Transfer benchmark: protect real photos toward a target identity with every leave-one-out
surrogate set, and measure the held-out victim (and dlib's C++ descriptor, always a black
box) next to a pixel-space PGD baseline.

  python tools/transfer_benchmark.py --photos=../shared/faces/deepface \
      --workdir=workdir/transfer [--config=configs/protect.py:demo] [--max_sources=4]

Photos and identities: every labelled photo of --photos (label CSVs as in
tools/calibrate_thresholds.py). The target identity is the one with the most photos (or
the identity of --target): its first photo is optimised against, its second is used only
for evaluation. The first photo of each other identity with two or more (up to
--max_sources) is a source; its second is its dodging reference, the paper's "another photo
of the source" (config.evaluate.source_references).
For each model v of --models, the surrogates are the others and v is the victim:
  latent  the protect job (config --config; its fr.* fields are set here), in
          WORKDIR/latent_without_<v>; alignment and inversion are shared.
  pgd     L_inf PGD (eps --pgd_eps, --pgd_steps steps of 1/255) on the same surrogates
          and loss, on the face aligned at --pgd_size, pasted back into the photo.
Victims: v (on the aligned face) and dlib C++ (on the pasted-back photo). The table gives
impersonation / dodging PSR at FAR 0.1 / 0.01 / 0.001 (calibrated thresholds), the mean
similarity (cosine) or distance (dlib) to the target's evaluation photo, and PSNR and
LPIPS to the original aligned face (LPIPS only with real LPIPS weights: the config's
tune.lpips_weights). For the latent method the reconstruction (tuned generator at w0,
before the search) is shown too: what the generator alone does to the face. Skips cleanly
when the default --photos is missing (a given one that is missing fails). Resumable: the
latent method as the protect job is (its evaluation redone each run); a finished PGD set
is read back when made from the same photos and FR weights (by content), settings and
thresholds, else the rerun fails naming what differs. table.md holds the rows of this
invocation's --methods and --models.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/protect.py:demo",
                                          "protect config for the latent method")
flags.DEFINE_string("photos", "../shared/faces/deepface", "labelled photos + CSVs")
flags.DEFINE_string("workdir", "workdir/transfer", "outputs (resumable)")
flags.DEFINE_list("models", ["dlib_resnet", "faceres", "mobileface"],
                  "FR models; each is held out once as the victim")
flags.DEFINE_string("target", "", "file of the target identity (default: largest identity)")
flags.DEFINE_integer("max_sources", 4, "source photos (one per other identity)")
flags.DEFINE_enum("mode", "impersonation", ["impersonation", "dodging"], "attack mode")
flags.DEFINE_list("methods", ["latent", "pgd"], "latent and/or pgd")
flags.DEFINE_float("pgd_eps", 8 / 255, "PGD L_inf radius in [0, 1] pixels")
flags.DEFINE_integer("pgd_steps", 50, "PGD steps (step size 1/255)")
flags.DEFINE_integer("pgd_size", 256, "aligned face size PGD attacks")
FLAGS = flags.FLAGS


def choose_photos(folder: str, target: str, max_sources: int):
  """(target optimisation photo, target evaluation photo, source photos, source photo ->
  another photo of its person) as file names."""
  from clip2protect_jax import calibration
  csvs = sorted(glob.glob(os.path.join(folder, "*.csv")))
  ident = calibration.identities(calibration.read_pair_labels(csvs))
  members: dict[int, list[str]] = {}
  for f, i in sorted(ident.items(), key=lambda kv: _natural(kv[0])):
    members.setdefault(i, []).append(f)
  if target:
    if target not in ident:
      raise SystemExit(f"--target={target} is not a labelled photo of {folder}")
    tid = ident[target]
  else:
    tid = max(members, key=lambda i: (len(members[i]), -i))
  if len(members[tid]) < 2:
    raise SystemExit("the target identity needs two photos (optimisation != evaluation)")
  opt = target or members[tid][0]
  ev = next(f for f in members[tid] if f != opt)
  sources = [m[:2] for i, m in sorted(members.items()) if i != tid and len(m) > 1]
  sources = sources[:max_sources]
  return opt, ev, [s for s, _ in sources], dict(sources)


def link_files(folder: str, links: dict[str, str]) -> str:
  """folder holding exactly these links (name -> file; links of an earlier run's other
  photos are removed: both methods attack every file in the sources folder)."""
  os.makedirs(folder, exist_ok=True)
  for f in os.listdir(folder):
    path = os.path.join(folder, f)
    if not os.path.islink(path):
      raise SystemExit(f"{path} is not a link this tool made; move it out of {folder}")
    if os.readlink(path) != os.path.abspath(links.get(f, path)):
      os.remove(path)
  for f, target in links.items():
    if not os.path.lexists(os.path.join(folder, f)):
      os.symlink(os.path.abspath(target), os.path.join(folder, f))
  return folder


def _natural(name: str):
  import re
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def latent_config(base, photos_dir, references_dir, target, evaluation, surrogates, victims,
                  mode):
  config = base.copy_and_resolve_references()
  with config.unlocked():
    config.photos = photos_dir
    config.evaluate.source_references = references_dir
    config.target.update(photo=target, crop=(), eval_photo=evaluation, eval_crop=())
    config.fr.update(surrogates=tuple(surrogates), victims=tuple(victims),
                     weights_dir="checkpoints")
    config.protect.mode = mode
    config.report.enabled = True
  return config


def run_latent(base, root, photos_dir, references_dir, target, evaluation, surrogates,
               victim):
  from clip2protect_jax import inversion, pipeline
  workdir = os.path.join(root, f"latent_without_{victim}")
  shared = os.path.join(root, "shared_" + inversion.SUBDIR)
  own = os.path.join(workdir, inversion.SUBDIR)
  if os.path.isdir(shared) and not os.path.isdir(own):
    shutil.copytree(shared, own)
  config = latent_config(base, photos_dir, references_dir, target, evaluation, surrogates,
                         (victim,), FLAGS.mode)
  metrics = pipeline.run(config, workdir)
  if not os.path.isdir(shared):
    shutil.copytree(own, shared)
  return metrics


def fr_folder(name: str) -> str:
  """The weights folder of FR model `name` (fetched by tools/fetch_assets.py)."""
  from clip2protect_jax.models.face import registry
  return os.path.join("checkpoints", registry.get(name).weights_subdir or name)


def run_pgd(base, root, photos_dir, references_dir, target, evaluation, surrogates, victim,
            fr_params):
  """PGD on each source face aligned at --pgd_size; metrics in the protect job's format."""
  import jax.numpy as jnp
  import numpy as np

  from clip2protect_jax import (align, baselines, evaluation as ev, image_io, pipeline,
                                protect, run_settings, weights)
  from clip2protect_jax.models.face import registry

  out_dir = os.path.join(root, f"pgd_without_{victim}")
  os.makedirs(out_dir, exist_ok=True)
  size = FLAGS.pgd_size
  names = tuple(surrogates) + (victim,)
  params = {m: fr_params[m] for m in names}
  sources = sorted(os.path.join(photos_dir, f) for f in os.listdir(photos_dir))
  config = latent_config(base, photos_dir, references_dir, target, evaluation, surrogates,
                         (victim,), FLAGS.mode)
  references = pipeline.source_references(config, sources)
  # A finished set is read back when made from the same photos and FR weights (by content),
  # settings and thresholds; else the rerun fails naming what differs.
  metrics_path = os.path.join(out_dir, "metrics.json")
  inputs = {"target": target, "evaluation": evaluation,
            **{f"source {os.path.basename(p)}": p for p in sources},
            **{f"reference {os.path.basename(p)}": p for p in references}}
  settings = {"mode": FLAGS.mode, "pgd_eps": FLAGS.pgd_eps, "pgd_steps": FLAGS.pgd_steps,
              "pgd_size": size, "surrogates": list(surrogates), "victim": victim,
              **{f"sha256 of {k}": image_io.file_sha256(p) for k, p in inputs.items()},
              **weights.fingerprints({f"fr.{m}": fr_folder(m) for m in names},
                                     {f"fr.{m}": registry.get(m).fetched_files for m in names}),
              "evaluate": base.evaluate.to_dict(), "lpips_weights": base.tune.lpips_weights,
              **{f"thresholds.{m}": {str(k): v for k, v in registry.get(m).thresholds.items()}
                 for m in names},
              "thresholds.dlib": registry.calibrated().get(ev.DLIB, {}).get("thresholds")}
  run_settings.check(os.path.join(out_dir, "settings.json"), settings,
                     os.path.exists(metrics_path), f"the PGD results in {out_dir}")
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      return json.load(f)
  faces, photos, photo_boxes, boxes = [], [], [], []
  for path in sources:
    photo = image_io.read_rgb(path)
    _, det, face = align.align_photo(photo, "largest", source=path, output_size=size)[0]
    faces.append(face)
    photos.append(photo)
    photo_boxes.append(det.box)
    boxes.append(align.box_to_aligned(det.box, face.corners, size))
  aligned = np.stack([f.image for f in faces])
  crops = {k: jnp.asarray(v) for k, v in
           pipeline.face_crops(names, aligned, np.stack(boxes).astype(np.float32)).items()}
  x0 = jnp.asarray(aligned, jnp.float32) / 255.0
  tgt_crop, tgt_aligned, _ = pipeline.read_target(target, (), 1,
                                                   registry.aligned_models(names))
  target_emb = protect.target_embeddings(surrogates, params, jnp.asarray(tgt_crop),
                                         tgt_aligned)
  adv = baselines.pgd_linf(params, tuple(surrogates), x0,
                           {k: v for k, v in crops.items()
                            if k in ("box", *registry.aligned_models(surrogates))},
                           target_emb, FLAGS.mode, FLAGS.pgd_eps, 1 / 255, FLAGS.pgd_steps)
  adv_u8 = np.asarray(jnp.round(adv * 255)).astype(np.uint8)
  images = {"original": aligned / 255.0, "reconstruction": aligned / 255.0,
            "protected": adv_u8 / 255.0}
  eval_crop, eval_aligned, _ = pipeline.read_target(
      evaluation, (), 1, registry.aligned_models((victim, *surrogates)))
  eval_emb = {k: np.asarray(v) for k, v in protect.target_embeddings(
      names, params, jnp.asarray(eval_crop), eval_aligned).items()}
  ref_emb = pipeline.photo_embeddings((*names, ev.DLIB), params,
                                      {p: p for p in (evaluation, *references)})
  sims = ev.fr_similarities(params, images, {k: np.asarray(v) for k, v in crops.items()},
                            eval_emb, {m: np.stack([ref_emb[m][p] for p in references])
                                       for m in names})
  records, dlib_faces = [], {}
  target_desc = ref_emb[ev.DLIB][evaluation]
  for j, path in enumerate(sources):
    fid = os.path.splitext(os.path.basename(path))[0]
    pasted = align.paste_back(photos[j], adv_u8[j], faces[j].corners, faces[j].valid)
    image_io.write_png(os.path.join(out_dir, fid + ".png"), pasted)
    desc = {"original": ev.dlib_descriptor(photos[j], photo_boxes[j]),
            "protected": ev.dlib_descriptor(pasted, photo_boxes[j])}
    desc["reconstruction"] = desc["original"]
    dlib_faces[fid] = ev.dlib_distances(desc, target_desc, ref_emb[ev.DLIB][references[j]])
    records.append({
        "id": fid, "psnr": {"protected_vs_original": ev.psnr(images["protected"][j],
                                                             images["original"][j])},
        "similarity": ev.face_similarities(sims, j)})
  metrics = ev.metrics(config, records, {"threshold": ev.DLIB_DISTANCE_THRESHOLD,
                                         "faces": dlib_faces})
  metrics["psnr_protected_vs_original"] = float(np.mean(
      [r["psnr"]["protected_vs_original"] for r in records]))
  metrics["lpips_protected_vs_original"] = mean_lpips(list(zip(aligned, adv_u8)),
                                                      base.tune.lpips_weights)
  image_io.atomic_write_json(metrics_path, metrics)
  return metrics


def latent_psnr(protect_dir: str, face_ids: list[str]) -> dict[str, float]:
  """Mean PSNR (dB) of these faces to their original aligned face: image kind -> value."""
  import numpy as np
  values: dict[str, list[float]] = {"reconstruction": [], "protected": []}
  for fid in face_ids:
    with open(os.path.join(protect_dir, "results", fid + ".json")) as f:
      psnr = json.load(f)["psnr"]
    values["reconstruction"].append(psnr["reconstruction_vs_original"])
    values["protected"].append(psnr["protected_vs_original"])
  return {k: float(np.mean(v)) if v else float("nan") for k, v in values.items()}


def mean_lpips(pairs: list[tuple[object, object]], weights: str) -> float | None:
  """Mean LPIPS over (a, b) uint8 [S, S, 3] pairs at 256, or None without real weights
  ('random' LPIPS is not a perceptual metric)."""
  if weights == "random" or not os.path.isdir(weights):
    return None
  import jax
  import jax.numpy as jnp
  import numpy as np

  from clip2protect_jax import resize
  from clip2protect_jax import weights as weights_lib
  model, variables, _ = weights_lib.load_lpips(weights, jax.random.key(0))
  prep = lambda x: resize.resize_bilinear(jnp.asarray(x[None], jnp.float32) / 127.5 - 1,
                                          (256, 256))
  return float(np.mean([float(jnp.mean(model.apply(variables, prep(a), prep(b))))
                        for a, b in pairs]))


def latent_lpips(workdir: str, face_ids: list[str], weights: str) -> float | None:
  from clip2protect_jax import image_io
  pairs = [tuple(image_io.read_rgb(os.path.join(workdir, stage, fid + ".png"))
                 for stage in ("invert/aligned", "protect/faces")) for fid in face_ids]
  return mean_lpips(pairs, weights) if pairs else None


def table_rows(method: str, victim: str, metrics: dict, psnr: dict[str, float], fars,
               lpips: float | None) -> list[str]:
  """Markdown rows: the held-out victim and dlib C++, per image kind in `psnr` + original;
  lpips: of the protected faces to the originals (None: no real LPIPS weights)."""
  rows = []
  for model in (victim, "dlib"):
    entry = metrics["models"].get(model)
    if entry is None:
      continue
    for kind in ("original", *psnr):
      rates = entry["by_image"][kind].get("far", {})
      cells = []
      for f in fars:
        r = rates.get(str(f))
        cells.append("n/a" if r is None else
                     f"{100 * r['impersonation_psr']:.0f} / {100 * r['dodging_psr']:.0f}")
      label = f"{model} (C++)" if model == "dlib" else model
      close = entry["by_image"][kind].get("mean_cos_target")
      close = (f"cos {close:.3f}" if close is not None else
               f"dist {entry['by_image'][kind]['mean_distance_target']:.3f}")
      shown = "n/a" if lpips is None or kind != "protected" else f"{lpips:.3f}"
      rows.append(f"| {method} | {victim} | {label} | {kind} | " + " | ".join(cells) +
                  f" | {close} | {psnr.get(kind, float('inf')):.1f} | {shown} |")
  return rows


def main(argv):
  del argv
  if not os.path.isdir(FLAGS.photos):
    if FLAGS["photos"].present:   # given, so a typo: not a clean skip
      raise app.UsageError(f"--photos={FLAGS.photos}: no such folder")
    print(f"transfer_benchmark: {FLAGS.photos} (the default --photos) not found; nothing "
          "to do (skipped).")
    return
  import jax

  from clip2protect_jax import weights

  target, evaluation, sources, references = choose_photos(FLAGS.photos, FLAGS.target,
                                                          FLAGS.max_sources)
  root = os.path.abspath(FLAGS.workdir)
  in_photos = lambda f: os.path.join(FLAGS.photos, f)
  photos_dir = link_files(os.path.join(root, "sources"), {f: in_photos(f) for f in sources})
  references_dir = link_files(os.path.join(root, "references"), {
      os.path.splitext(s)[0] + os.path.splitext(r)[1]: in_photos(r)
      for s, r in references.items()})
  target = os.path.abspath(os.path.join(FLAGS.photos, target))
  evaluation = os.path.abspath(os.path.join(FLAGS.photos, evaluation))
  print(f"target {os.path.basename(target)} (evaluated on {os.path.basename(evaluation)}), "
        f"sources (dodging reference) {references}, mode {FLAGS.mode}")
  fr_params = {}
  for i, m in enumerate(FLAGS.models):
    fr_params[m], _ = weights.load_face_model(m, fr_folder(m),
                                              jax.random.fold_in(jax.random.key(0), i))
  fars = tuple(float(f) for f in _CONFIG.value.evaluate.fars)
  lines = ["| method | held-out victim | evaluated on | image | " +
           " | ".join(f"imp / dodge PSR % @FAR {f:g}" for f in fars) +
           " | mean to target eval photo | PSNR dB | LPIPS |",
           "|---|---|---|---|" + "---|" * len(fars) + "---|---|---|"]
  lpips_weights = _CONFIG.value.tune.lpips_weights
  for victim in FLAGS.models:
    surrogates = [m for m in FLAGS.models if m != victim]
    if "latent" in FLAGS.methods:
      m = run_latent(_CONFIG.value, root, photos_dir, references_dir, target, evaluation,
                     surrogates, victim)
      latent_dir = os.path.join(root, f"latent_without_{victim}")
      lines += table_rows("latent", victim, m,
                          latent_psnr(os.path.join(latent_dir, "protect"), m["face_ids"]),
                          fars, latent_lpips(latent_dir, m["face_ids"], lpips_weights))
    if "pgd" in FLAGS.methods:
      m = run_pgd(_CONFIG.value, root, photos_dir, references_dir, target, evaluation,
                  surrogates, victim, fr_params)
      lines += table_rows("pgd", victim, m, {"protected": m["psnr_protected_vs_original"]},
                          fars, m["lpips_protected_vs_original"])
  table = "\n".join(lines)
  print("\n" + table)
  with open(os.path.join(root, "table.md"), "w") as f:
    f.write(f"sources (dodging reference) {references}, target "
            f"{os.path.basename(target)}, eval {os.path.basename(evaluation)}, mode "
            f"{FLAGS.mode}\n\n{table}\n")


if __name__ == "__main__":
  app.run(main)
