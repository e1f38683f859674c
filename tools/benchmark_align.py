"""CPU time per photo of face detection + FFHQ alignment (align.py), and of paste-back.

  python tools/benchmark_align.py [--photos ../shared/faces/deepface] [--limit 10]
      [--upsample 1]

Per photo: decode (PIL, plus dlib's decode for the detector, as the invert job and the
official code do), dlib detection (HOG, --upsample) + 68 landmarks, the e4e FFHQ
alignment of the largest face (shrink / crop / pad+blur / warp to 256), and paste-back
of the aligned face into the photo. Prints one line per photo and the means. The dlib
models are loaded once, before timing.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("photos", "../shared/faces/deepface", "Folder (or file) of photos.")
flags.DEFINE_integer("limit", 10, "At most this many photos (sorted by name).")
flags.DEFINE_integer("upsample", 1, "dlib detector upsampling (official: 1).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import numpy as np

  from clip2protect_jax import align, image_io
  from clip2protect_jax.inversion import list_photos

  photos = list_photos(FLAGS.photos)[:FLAGS.limit]
  t = time.perf_counter()
  align.dlib_models()
  print(f"dlib models loaded in {time.perf_counter() - t:.2f} s; {len(photos)} photos, "
        f"upsample {FLAGS.upsample}, {os.cpu_count()} CPUs")
  print(f"{'photo':<28} {'W x H':>11} {'faces':>5} {'decode s':>9} {'detect s':>9} "
        f"{'align s':>8} {'paste s':>8} {'total s':>8}")
  rows = []
  for path in photos:
    t0 = time.perf_counter()
    photo = image_io.read_rgb(path)
    pixels = align.read_for_detection(path, photo)
    t1 = time.perf_counter()
    try:
      dets = align.detect_faces(pixels, FLAGS.upsample, path)
      t2 = time.perf_counter()
      [(_, det)] = align.select_faces(dets, "largest", path)
      aligned = align.align_face(photo, det.landmarks)
      t3 = time.perf_counter()
      align.paste_back(photo, aligned.image, aligned.corners, aligned.valid)
      t4 = time.perf_counter()
    except align.FaceAlignmentError as e:
      print(f"{os.path.basename(path):<28} skipped: {e}")
      continue
    row = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)
    rows.append(row)
    size = f"{photo.shape[1]}x{photo.shape[0]}"
    print(f"{os.path.basename(path):<28} {size:>11} {len(dets):>5} " +
          " ".join(f"{v:>8.3f}" for v in row))
  if rows:
    means = np.mean(np.array(rows), axis=0)
    print(f"{'mean':<28} {'':>11} {'':>5} " + " ".join(f"{v:>8.3f}" for v in means))
    print(f"median total per photo: {statistics.median(r[-1] for r in rows):.3f} s")


if __name__ == "__main__":
  app.run(main)
