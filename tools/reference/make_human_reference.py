"""Builds tests/data/human_models_tfjs.npz: TF.js outputs of human-models faceres/mobileface.

  python tools/reference/make_human_reference.py [--models checkpoints/human-models]
      [--photos assets/photos] [--npm-dir /tmp/clip2protect-tfjs-4.22.0]
      [--out tests/data/human_models_tfjs.npz]

Inputs (uint8 RGB, stored in the npz): the largest dlib face of biden.jpg, obama.jpg and
obama2.jpg, cut as a square of LOOSE x the dlib box side around the box centre (outside
the photo: black, like tf.image.cropAndResize) and resized with PIL bilinear to 224x224
(faceres) and 112x112 (mobileface), plus one seeded uniform-noise image per size. Both
models get the pixel values as float32 in [0, 255] (the graphs' own convention, see
models/face/human.py). The TF.js side (tfjs_reference.mjs, CPU backend) runs under node
with the pinned packages below, npm-installed into --npm-dir (a temp folder, reused when
it already holds them), never into the repo. Needs node + npm and registry access once.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

TFJS_VERSION = "4.22.0"  # the version @vladmandic/human 3.3.x builds against
PACKAGES = [f"@tensorflow/{p}@{TFJS_VERSION}"
            for p in ("tfjs-core", "tfjs-backend-cpu", "tfjs-converter")]
PHOTOS = (("biden", "sources/biden.jpg"), ("obama", "targets/obama.jpg"),
          ("obama2", "targets/obama2.jpg"))
LOOSE = 1.5  # crop side / dlib box side (human: BlazeFace box x 1.4, squared)
SEED = 0
HERE = os.path.dirname(os.path.abspath(__file__))


def face_crop(photo: np.ndarray, size: int) -> np.ndarray:
  """Loose square crop around the largest dlib face, resized to size x size (uint8)."""
  from clip2protect_jax import align
  l, t, r, b = align.largest_face_box(photo)
  cx, cy, half = (l + r) / 2, (t + b) / 2, LOOSE * max(r - l, b - t) / 2
  box = tuple(int(round(v)) for v in (cx - half, cy - half, cx + half, cy + half))
  crop = Image.fromarray(photo).crop(box)  # zero-filled outside the photo
  return np.asarray(crop.resize((size, size), Image.BILINEAR), np.uint8)


def make_inputs(photos_dir: str) -> tuple[list[str], dict[int, np.ndarray]]:
  """(names, {size: uint8 [4, size, size, 3]}) for sizes 224 and 112."""
  from clip2protect_jax import image_io
  rng = np.random.default_rng(SEED)
  photos = [image_io.read_rgb(os.path.join(photos_dir, p)) for _, p in PHOTOS]
  out = {}
  for size in (224, 112):
    noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    out[size] = np.stack([face_crop(p, size) for p in photos] + [noise])
  return [n for n, _ in PHOTOS] + ["random"], out


def ensure_tfjs(npm_dir: str) -> str:
  """npm-installs the pinned TF.js packages into npm_dir (once) -> its node_modules."""
  modules = os.path.join(npm_dir, "node_modules")
  want = {p.rsplit("@", 1)[0]: TFJS_VERSION for p in PACKAGES}
  have = {}
  for name in want:
    pj = os.path.join(modules, name, "package.json")
    if os.path.isfile(pj):
      with open(pj) as f:
        have[name] = json.load(f)["version"]
  if have != want:
    os.makedirs(npm_dir, exist_ok=True)
    with open(os.path.join(npm_dir, "package.json"), "w") as f:
      json.dump({"name": "tfjs-reference", "private": True}, f)
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--save-exact",
                    "--prefix", npm_dir, *PACKAGES], check=True)
  return modules


def run_tfjs(modules: str, runs: list[dict], inputs: dict[str, np.ndarray]
             ) -> tuple[dict[str, np.ndarray], dict]:
  """Writes the job, runs node, reads every output back as float32 arrays."""
  with tempfile.TemporaryDirectory() as job:
    for name, x in inputs.items():
      np.ascontiguousarray(x, "<f4").tofile(os.path.join(job, name))
    with open(os.path.join(job, "job.json"), "w") as f:
      json.dump({"runs": runs}, f)
    subprocess.run(["node", os.path.join(HERE, "tfjs_reference.mjs"), modules, job],
                   check=True)
    with open(os.path.join(job, "result.json")) as f:
      result = json.load(f)
    outs = {k: np.fromfile(os.path.join(job, f"{k}.f32"), "<f4").reshape(v["shape"])
            for k, v in result["outputs"].items()}
  return outs, result


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--models", default="checkpoints/human-models")
  ap.add_argument("--photos", default="assets/photos")
  ap.add_argument("--npm-dir", default=os.path.join(tempfile.gettempdir(),
                                                    f"clip2protect-tfjs-{TFJS_VERSION}"))
  ap.add_argument("--out", default="tests/data/human_models_tfjs.npz")
  args = ap.parse_args()

  names, images = make_inputs(args.photos)
  models = os.path.abspath(args.models)
  runs = [{"model": os.path.join(models, "faceres.json"), "input_node": "input_1",
           "input": "faceres.f32", "shape": list(images[224].shape),
           "outputs": {"faceres_embedding": "global_pooling/Mean",
                       "faceres_gender": "gender_pred/Sigmoid",
                       "faceres_age": "age_pred/Softmax"}},
          {"model": os.path.join(models, "mobileface.json"), "input_node": "data",
           "input": "mobileface.f32", "shape": list(images[112].shape),
           "outputs": {"mobileface_embedding": "batchnorm0/add_1"}}]
  outs, result = run_tfjs(ensure_tfjs(args.npm_dir), runs,
                          {"faceres.f32": images[224].astype(np.float32),
                           "mobileface.f32": images[112].astype(np.float32)})
  meta = {"tfjs": result["versions"], "backend": result["backend"],
          "human_models": "3.0.4", "loose": LOOSE, "seed": SEED,
          "input_range": "float32 pixel values in [0, 255], RGB"}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.savez_compressed(args.out, names=np.array(names), faceres_inputs=images[224],
                      mobileface_inputs=images[112], meta=np.array(json.dumps(meta)),
                      **{k: v.astype(np.float32) for k, v in outs.items()})
  print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e3:.0f} kB): names {names}, "
        + ", ".join(f"{k} {v.shape}" for k, v in outs.items()) + f"; {meta['tfjs']}")


if __name__ == "__main__":
  main()
