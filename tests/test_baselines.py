"""Pixel PGD baseline and the transfer benchmark's photo choice and source links."""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip2protect_jax import baselines, protect
from clip2protect_jax.models.face import registry
from tests.test_protect import ALIGNED_FR, TINY_FR, TinyFR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("fast_compiles")


def test_pgd_stays_in_the_ball_and_lowers_the_loss():
  names = (TINY_FR[0], ALIGNED_FR)
  params = {TINY_FR[0]: TinyFR().init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"],
            ALIGNED_FR: TinyFR().init(jax.random.key(1), jnp.zeros((1, 12, 12, 3)))["params"]}
  x0 = jax.random.uniform(jax.random.key(2), (2, 20, 20, 3))
  crops = {"box": jnp.array([[2.0, 2.0, 18.0, 18.0], [0.0, 1.0, 20.0, 19.0]]),
           ALIGNED_FR: jnp.array([[[1.2, 0.0, 2.0], [0.0, 1.2, 3.0]]] * 2)}
  target = {m: jax.random.normal(jax.random.key(3 + i), (12,)) for i, m in enumerate(names)}
  adv = baselines.pgd_linf(params, names, x0, crops, target, "impersonation", 8 / 255,
                           1 / 255, 20)
  assert float(jnp.abs(adv - x0).max()) <= 8 / 255 + 1e-6
  assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0

  def loss(x):
    emb = protect.fr_embeddings(names, params, x, crops)
    return sum(float(jnp.mean(1 - registry.cosine_similarity(emb[m], target[m])))
               for m in names)

  assert loss(adv) < loss(x0) - 1e-3


def test_transfer_benchmark_chooses_distinct_target_photos_and_refuses_missing_photos(
    tmp_path):
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  import transfer_benchmark
  (tmp_path / "labels.csv").write_text(
      "file_x,file_y,Decision\nimg1.jpg,img2.jpg,Yes\nimg2.jpg,img10.jpg,Yes\n"
      "img3.jpg,img4.jpg,Yes\nimg5.jpg,img6.jpg,Yes\nimg1.jpg,img3.jpg,No\n")
  opt, ev, sources, refs = transfer_benchmark.choose_photos(str(tmp_path), "", 5)
  assert (opt, ev) == ("img1.jpg", "img2.jpg") and sources == ["img3.jpg", "img5.jpg"]
  assert refs == {"img3.jpg": "img4.jpg", "img5.jpg": "img6.jpg"}   # same identity
  opt, ev, sources, refs = transfer_benchmark.choose_photos(str(tmp_path), "img4.jpg", 1)
  assert (opt, ev) == ("img4.jpg", "img3.jpg") and len(sources) == 1 and len(refs) == 1
  out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "transfer_benchmark.py"),
                        f"--photos={tmp_path / 'absent'}", f"--workdir={tmp_path / 'w'}"],
                       capture_output=True, text=True, cwd=ROOT)
  assert out.returncode != 0 and "--photos=" in out.stderr and "no such folder" in out.stderr
  assert not np.any([p.name == "w" for p in tmp_path.iterdir()])
  folder = str(tmp_path / "w" / "sources")   # a rerun with fewer sources attacks only those
  links = {f: str(tmp_path / f) for f in ("img3.jpg", "img5.jpg")}
  transfer_benchmark.link_files(folder, links)
  transfer_benchmark.link_files(folder, {"img5.jpg": links["img5.jpg"]})
  assert os.listdir(folder) == ["img5.jpg"]
  assert os.readlink(os.path.join(folder, "img5.jpg")) == str(tmp_path / "img5.jpg")
  transfer_benchmark.link_files(folder, {"img5.jpg": str(tmp_path / "img6.jpg")})  # retargeted
  assert os.readlink(os.path.join(folder, "img5.jpg")) == str(tmp_path / "img6.jpg")
  (tmp_path / "w" / "sources" / "mine.jpg").write_text("")
  with pytest.raises(SystemExit, match="not a link"):
    transfer_benchmark.link_files(folder, {})
