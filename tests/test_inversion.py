"""The `invert` job (alignment -> W+ codes in the workdir, resumable) and projection.py."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from clip2protect_jax import align, inversion, projection, run_settings, shards
from clip2protect_jax.image_io import read_rgb
from clip2protect_jax.models import stylegan2

GOLDEN = "tests/golden"
# Photo-derived golden data (../shared/faces/README.md: photos are not committed).
ALIGN_GOLDEN = "../shared/golden/ffhq_align"
needs_photos = pytest.mark.skipif(
    not os.path.isdir(ALIGN_GOLDEN), reason=f"{ALIGN_GOLDEN} not present")
CONFIG = "configs/invert.py"


pytestmark = pytest.mark.usefixtures("fast_compiles")


def _config(arg: str = ""):
  spec = importlib.util.spec_from_file_location("invert_config", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_the_smoke_config_points_at_a_fetched_photo():
  """configs/invert.py:tiny (README's CPU smoke run) reads an example photo that
  tools/setup.sh fetches, not a path that only exists on a development machine."""
  assert os.path.isfile(_config("tiny").photos), _config("tiny").photos


# ------------------------------------------------------------------ the job

@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
  """A face photo, a two-face photo, a flat image (no face) and a tiny image."""
  pytest.importorskip("dlib")
  try:
    align.dlib_models()
  except align.MissingModelError as e:
    pytest.skip(str(e))
  root = tmp_path_factory.mktemp("photos")
  if not os.path.isdir(ALIGN_GOLDEN):
    pytest.skip(f"{ALIGN_GOLDEN} not present")
  face = read_rgb(os.path.join(ALIGN_GOLDEN, "img14_pretransform.png"))
  Image.fromarray(face).save(root / "a_face.png")
  small = np.asarray(Image.fromarray(face).resize((240, 240), Image.Resampling.LANCZOS))
  pad = np.zeros((318, 240, 3), np.uint8)
  pad[:240] = small
  os.makedirs(root / "sub")
  Image.fromarray(np.concatenate([face, pad], axis=1)).save(root / "sub" / "group.png")
  Image.fromarray(np.full((120, 120, 3), 90, np.uint8)).save(root / "flat.png")
  Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(root / "tiny.png")
  with open(root / "notes.txt", "w") as f:
    f.write("not a photo")
  return str(root), face


def test_invert_job_with_given_latents_is_complete_and_resumable(photo_dir, tmp_path):
  root, face = photo_dir
  config = _config("latents")
  config.photos = root
  config.align.face_policy = "all"
  codes = np.random.default_rng(0).standard_normal((3, 18, 512)).astype(np.float32)
  config.latents_file = str(tmp_path / "latents.npy")
  np.save(config.latents_file, codes)
  workdir = str(tmp_path / "work")

  summary = inversion.run(config, workdir)
  out = inversion.load_inversion(workdir)
  # Faces in sorted id order, codes in sorted path order (here the same): a_face (1 face),
  # sub/group (2 faces).
  assert list(out["ids"]) == ["a_face.png_f0", "sub__group.png_f0", "sub__group.png_f1"]
  np.testing.assert_array_equal(out["wplus"], codes)
  assert out["boxes"].shape == (3, 4) and out["corners"].shape == (3, 4, 2)
  errors = {os.path.basename(e["source"]): e["error"] for e in summary["errors"]}
  assert set(errors) == {"flat.png", "tiny.png"}
  assert "no face found" in errors["flat.png"] and "too small" in errors["tiny.png"]
  # The stored aligned face and transform are those of align.py on the photo.
  ref = align.align_photo(face, "largest")[0][2]
  aligned = read_rgb(os.path.join(workdir, "invert", "aligned", "a_face.png_f0.png"))
  np.testing.assert_array_equal(aligned, ref.image)
  np.testing.assert_allclose(out["corners"][0], ref.corners)
  np.testing.assert_allclose(out["valid"][0], ref.valid)
  # The two group faces come from the two halves of the group photo.
  assert out["boxes"][1:, 0].min() < 318 <= out["boxes"][1:, 0].max()
  # Paste-back from the stored arrays leaves the photo outside the face untouched.
  pasted = align.paste_back(face, aligned, out["corners"][0], out["valid"][0])
  mask = align.paste_mask(face.shape, out["corners"][0], out["valid"][0])
  np.testing.assert_array_equal(pasted[mask == 0], face[mask == 0])

  # A rerun with a changed file is refused (its codes would mix with those taken before);
  # with the same file, nothing is re-aligned or re-encoded.
  np.save(config.latents_file, codes + 1.0)
  with pytest.raises(ValueError, match=r"other codes than it gave them before"):
    inversion.run(config, workdir)
  np.save(config.latents_file, codes)
  before = os.path.getmtime(os.path.join(workdir, "invert", "aligned", "a_face.png_f0.png"))
  summary2 = inversion.run(config, workdir)
  assert summary2["encoded_now"] == 0 and summary2["kept_from_earlier_runs"] == 3
  assert before == os.path.getmtime(
      os.path.join(workdir, "invert", "aligned", "a_face.png_f0.png"))
  # An interrupted encode (a missing latent file) is redone for that face only.
  os.remove(os.path.join(workdir, "invert", "latents", "sub__group.png_f1.npz"))
  summary3 = inversion.run(config, workdir)
  assert summary3["encoded_now"] == 1
  np.testing.assert_array_equal(inversion.load_inversion(workdir)["wplus"], codes)
  leftovers = [f for _, _, fs in os.walk(workdir) for f in fs if f.endswith(".tmp")]
  assert not leftovers
  with open(os.path.join(workdir, "invert", "summary.json")) as f:
    assert json.load(f)["n_faces"] == 3


def test_invert_job_in_shards_then_whole(photo_dir, tmp_path):
  """Two shards of one workdir (shards.py) each align and encode their own photos; the
  whole run afterwards only gathers what they made."""
  root, _ = photo_dir
  config = _config("latents")
  config.photos = root
  config.align.face_policy = "all"
  ids = ["a_face.png_f0", "sub__group.png_f0", "sub__group.png_f1"]
  codes = np.random.default_rng(0).standard_normal((3, 18, 512)).astype(np.float32)
  config.latents_file = str(tmp_path / "latents.npy")
  np.save(config.latents_file, codes)
  workdir = str(tmp_path / "work")
  config.num_shards = 2
  with pytest.raises(ValueError, match=r"without an 'ids' array .*\(shard_index 0 of 2 shards\)"):
    inversion.run(config, workdir)   # codes by position need every face
  assert not os.path.exists(os.path.join(workdir, "invert", "faces"))   # before any work
  config.latents_file = str(tmp_path / "latents.npz")
  np.savez(config.latents_file, wplus=codes[::-1], ids=np.array(ids[::-1]))
  # Sorted photos: a_face, flat, sub/group, tiny; shard 0 takes the 1st and 3rd.
  first = inversion.run(config, workdir)
  config.shard_index = 1
  other = config.copy_and_resolve_references()
  other.latents_file = str(tmp_path / "other.npz")
  np.savez(other.latents_file, wplus=codes, ids=np.array(ids))
  with pytest.raises(run_settings.SettingsMismatchError, match="latents_file"):
    inversion.run(other, workdir)   # shard 0's codes come from another file
  second = inversion.run(config, workdir)
  assert first["n_faces"] == 3 and second["n_faces"] == 0
  assert {os.path.basename(e["source"]) for e in second["errors"]} == {"flat.png", "tiny.png"}
  assert second["shard"] == {"index": 1, "count": 2}
  with np.load(os.path.join(workdir, "invert", "invert.shard-0-of-2.npz")) as d:
    assert list(d["ids"]) == ids
    np.testing.assert_array_equal(d["wplus"], codes)
  with np.load(os.path.join(workdir, "invert", "invert.shard-1-of-2.npz")) as d:
    assert d["wplus"].shape == (0, 18, 512)
  with open(os.path.join(workdir, "invert", "summary.shard-1-of-2.json")) as f:
    assert json.load(f)["output"] == os.path.join("invert", "invert.shard-1-of-2.npz")
  assert not os.path.exists(os.path.join(workdir, "invert", "invert.npz"))
  config.num_shards = 1
  whole = inversion.run(config, workdir)
  assert whole["encoded_now"] == 0 and whole["n_faces"] == 3 and len(whole["errors"]) == 2
  np.testing.assert_array_equal(inversion.load_inversion(workdir)["wplus"], codes)


def test_invert_job_errors(photo_dir, tmp_path, monkeypatch):
  root, _ = photo_dir
  config = _config("latents")
  config.photos = root
  config.latents_file = str(tmp_path / "two.npy")
  np.save(config.latents_file, np.zeros((2, 18, 512), np.float32))   # 2 faces: largest
  config.align.on_error = "raise"
  with pytest.raises(align.FaceAlignmentError, match="flat.png: no face found"):
    inversion.run(config, str(tmp_path / "w1"))
  config.align.on_error = "skip"
  np.save(config.latents_file, np.zeros((3, 18, 512), np.float32))
  with pytest.raises(ValueError, match="3 codes for 2 faces"):
    inversion.run(config, str(tmp_path / "w2"))
  np.save(config.latents_file, np.zeros((2, 18, 512), np.float32))
  inversion.run(config, str(tmp_path / "w2"))
  config.method = "e4e"
  config.e4e.weights = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="kind=e4e"):
    inversion.run(config, str(tmp_path / "w3"))
  assert not os.path.exists(tmp_path / "w3")   # before any work
  # Every face done (codes made elsewhere, say): the encoder's weights are not needed. A
  # workdir with some codes but photos left still needs them before any work.
  inversion.check_config(config, shards.Shard(0, 1), str(tmp_path / "w2"))
  os.makedirs(tmp_path / "w3" / "invert" / "latents")
  (tmp_path / "w3" / "invert" / "latents" / "x.npz").touch()
  with pytest.raises(FileNotFoundError, match="kind=e4e"):
    inversion.check_config(config, shards.Shard(0, 1), str(tmp_path / "w3"))
  config.method = "latents"
  config.photos = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="no such file or folder"):
    inversion.run(config, str(tmp_path / "w4"))
  # A file that is not codes fails before any work, naming the field and without the
  # loaders' advice to unpickle it (which runs its code).
  has_torch = importlib.util.find_spec("torch") is not None
  for name in ("codes.npz", "codes.npy") + (("codes.pt",) if has_torch else ()):
    config.latents_file = str(tmp_path / name)
    with open(config.latents_file, "w") as f:
      f.write("not codes")
    with pytest.raises(ValueError, match=r"config.latents_file=.*cannot be read as codes") as e:
      inversion.run(config, str(tmp_path / "w6"))
    assert "allow_pickle=True" not in str(e.value) and "weights_only=False" not in str(e.value)
    assert not os.path.exists(tmp_path / "w6")
  config.latents_file = str(tmp_path / "rows.npy")   # codes for another generator size
  np.save(config.latents_file, np.zeros((2, 14, 512), np.float32))
  with pytest.raises(ValueError, match=r"rows.npy gives 14 W\+ rows but config.generator"):
    inversion.run(config, str(tmp_path / "w6"))
  assert not os.path.exists(tmp_path / "w6")
  config.latents_file = str(tmp_path / "codes.pt")   # the official e4e's latents.pt
  open(config.latents_file, "wb").close()
  real_find_spec = importlib.util.find_spec   # a runtime setup: no torch
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
  with pytest.raises(ModuleNotFoundError, match="needs PyTorch.*numpy.savez"):
    inversion.run(config, str(tmp_path / "w5"))


def test_missing_dlib_stops_the_job_and_is_not_recorded_as_the_photos_fault(
    photo_dir, tmp_path, monkeypatch):
  root, _ = photo_dir
  config = _config("latents")
  config.photos = root
  config.latents_file = str(tmp_path / "two.npy")
  np.save(config.latents_file, np.zeros((2, 18, 512), np.float32))
  workdir = str(tmp_path / "w")

  def not_installed():
    raise align.MissingModelError("face detection needs `pip install dlib-bin`")

  with monkeypatch.context() as m:
    m.setattr(align, "dlib_models", not_installed)
    with pytest.raises(align.MissingModelError, match="dlib-bin"):   # on_error=skip too
      inversion.run(config, workdir)
  faces = os.path.join(workdir, "invert", "faces")
  assert not (os.path.isdir(faces) and os.listdir(faces))   # no photo record written
  assert inversion.run(config, workdir)["n_faces"] == 2   # installed: every photo aligns


@needs_photos
def test_pre_aligned_photos_and_id_matched_latents(tmp_path):
  root = tmp_path / "aligned"
  os.makedirs(root)
  img = np.asarray(Image.open(os.path.join(ALIGN_GOLDEN, "img14_aligned256.png")))
  Image.fromarray(np.asarray(Image.fromarray(img).resize((512, 512)))).save(root / "x.png")
  config = _config("latents")
  config.photos = str(root)
  config.align.enabled = False
  config.latents_file = str(tmp_path / "codes.npz")
  w = np.arange(512, dtype=np.float32)
  np.savez(config.latents_file, wplus=w[None], ids=np.array(["x.png_f0"]))
  inversion.run(config, str(tmp_path / "w"))
  out = inversion.load_inversion(str(tmp_path / "w"))
  np.testing.assert_array_equal(out["wplus"][0], np.broadcast_to(w, (18, 512)))  # W -> W+
  np.testing.assert_array_equal(out["corners"][0], [[0, 0], [0, 512], [512, 512], [512, 0]])
  # Codes without ids follow the photos' sorted paths (the official e4e's order), which
  # face ids do not keep: 'x y.png' < 'x.png' as paths, 'x_y.png_f0' > 'x.png_f0' as ids.
  shutil.copy(root / "x.png", root / "x y.png")
  np.save(config.latents_file.replace(".npz", ".npy"), np.stack([w, -w]))
  config.latents_file = config.latents_file.replace(".npz", ".npy")
  inversion.run(config, str(tmp_path / "w2"))
  out = inversion.load_inversion(str(tmp_path / "w2"))
  assert list(out["ids"]) == ["x.png_f0", "x_y.png_f0"]
  np.testing.assert_array_equal(out["wplus"][:, 0], [-w, w])
  # A resumed run takes the new photo's code, and refuses a file that gives the faces
  # already done other codes (a changed file, or an older version's face-id order).
  shutil.copy(root / "x.png", root / "y.png")
  np.save(config.latents_file, np.stack([w, -w, 2 * w]))
  assert inversion.run(config, str(tmp_path / "w2"))["encoded_now"] == 1
  shutil.copy(root / "x.png", root / "z.png")
  np.save(config.latents_file, np.stack([-w, w, 2 * w, 3 * w]))
  with pytest.raises(ValueError, match=r"faces \['x.png_f0', 'x_y.png_f0'\] other codes"):
    inversion.run(config, str(tmp_path / "w2"))
  for name in ("y.png", "z.png"):   # photos removed: codes no longer match by position, and
    os.remove(root / name)          # a finished run takes none
  assert inversion.run(config, str(tmp_path / "w2"))["encoded_now"] == 0


def test_resume_refuses_other_photos_and_other_settings(tmp_path):
  """A rerun never reuses a face for another photo, or codes made with other settings: two
  photos of one key, a photo replaced under its name, and a changed alignment or encoding
  setting each fail with what differs. A changed photo that gave no face is re-aligned."""
  root = tmp_path / "photos"
  os.makedirs(root)
  rng = np.random.default_rng(0)
  save = lambda name, hw=40: Image.fromarray(
      rng.integers(0, 255, (hw, hw, 3), dtype=np.uint8)).save(root / name)
  save("x y.png")
  save("x_y.png")
  config = _config("latents")
  config.update(photos=str(root), latents_file=str(tmp_path / "codes.npy"))
  config.align.enabled = False
  np.save(config.latents_file, np.zeros((2, 18, 512), np.float32))
  with pytest.raises(ValueError, match="both map to the face key 'x_y.png'"):
    inversion.run(config, str(tmp_path / "w0"))
  assert not os.path.exists(tmp_path / "w0" / "invert" / "faces")   # before any work

  os.remove(root / "x y.png")
  save("z.png", hw=8)   # too small: an alignment error, no face
  workdir = str(tmp_path / "w")
  np.save(config.latents_file, np.zeros((1, 18, 512), np.float32))
  assert inversion.run(config, workdir)["n_faces"] == 1
  save("z.png")         # replaced by a usable photo: aligned now
  np.save(config.latents_file, np.zeros((2, 18, 512), np.float32))
  assert inversion.run(config, workdir)["n_faces"] == 2
  save("x_y.png")       # another photo under an aligned face's name
  with pytest.raises(ValueError, match="x_y.png.json, was made from a different photo"):
    inversion.run(config, workdir)

  workdir = str(tmp_path / "w2")
  inversion.run(config, workdir)
  config.align.output_size = 128
  with pytest.raises(run_settings.SettingsMismatchError,
                     match="align.output_size: 256 there, 128 now"):
    inversion.run(config, workdir)
  config.align.output_size = 256
  config.generator.conv_impl = "xla"   # the same function: no mismatch
  config.latents_file = str(tmp_path / "other.npy")
  np.save(config.latents_file, np.zeros((2, 18, 512), np.float32))
  with pytest.raises(run_settings.SettingsMismatchError, match="latents_file: .*codes.npy"):
    inversion.run(config, workdir)


# ------------------------------------------------------------------ projection

@pytest.fixture(scope="module")
def tiny_generator():
  """(model, params, two smooth target images [2, 32, 32, 3] in [-1, 1], mean w, w std)."""
  model = stylegan2.Generator(32, 32, 2, channel_max=16)
  params = stylegan2.init_params(model, jax.random.key(0))
  yy, xx = np.mgrid[0:32, 0:32] / 31.0
  targets = np.stack([np.stack([xx, yy, xx * yy], -1), np.stack([yy, 1 - xx, xx], -1)])
  mean, std = projection.latent_stats(model, params, jax.random.key(2), 256)
  return model, params, jnp.asarray(targets * 1.6 - 0.8, jnp.float32), mean, std


def test_projection_reduces_the_loss_and_batches_equal_single_images(tiny_generator):
  model, params, targets, mean, std = tiny_generator
  cfg = projection.ProjectionConfig(steps=20, mse=1.0, lpips=0.0, noise_regularize=1e3,
                                    n_mean_latent=256)
  keys = jax.random.split(jax.random.key(3), 2)
  proj = projection.make_projector(model, cfg, None)
  wplus, noises, losses = projection.project(model, params, targets, jax.random.key(2), cfg,
                                             None, image_keys=keys, latent_mean=mean,
                                             latent_std=std, projector=proj)
  assert wplus.shape == (2, model.n_latent, 32)
  start = model.apply({"params": params},
                      stylegan2.broadcast_to_wplus(jnp.broadcast_to(mean, (2, 32)), 32), noises)
  end = model.apply({"params": params}, wplus, noises)
  mse0 = np.mean((np.asarray(start) - np.asarray(targets)) ** 2, axis=(1, 2, 3))
  mse1 = np.mean((np.asarray(end) - np.asarray(targets)) ** 2, axis=(1, 2, 3))
  assert np.all(mse1 < 0.5 * mse0), (mse0, mse1)
  for n in noises:                                   # re-normalised after every step
    np.testing.assert_allclose(np.asarray(n).mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
  # Image 1 in another batch (other slot, other neighbour), with its own key, gives the
  # same code up to float rounding (a different key moves it by ~1e-1).
  other = jnp.stack([targets[1], -targets[0]])
  again, _, _ = projection.project(model, params, other, jax.random.key(2), cfg, None,
                                   image_keys=jnp.stack([keys[1], keys[0]]),
                                   latent_mean=mean, latent_std=std, projector=proj)
  diff = np.abs(np.asarray(again[0]) - np.asarray(wplus[1]))
  assert diff.max() < 2e-3 and diff.mean() < 1e-4, (diff.max(), diff.mean())


def test_projection_settings_that_cannot_work_fail_clearly(tiny_generator):
  for ramp in ("lr_rampup", "lr_rampdown", "noise_ramp"):
    with pytest.raises(ValueError, match=f"projection.{ramp}=0.0 must be > 0"):
      projection.ProjectionConfig(**{ramp: 0.0})   # projector.py divides by it
  model = tiny_generator[0]
  with pytest.raises(ValueError, match="needs a Perceptual"):   # not silently MSE-free
    projection.make_projector(model, projection.ProjectionConfig(lpips=1.0), None)


def test_projection_w_mode_gives_equal_rows(tiny_generator):
  model, params, targets, mean, std = tiny_generator
  cfg = projection.ProjectionConfig(steps=2, mse=1.0, lpips=0.0, w_plus=False)
  wplus, _, _ = projection.project(model, params, targets[:1], jax.random.key(1), cfg, None,
                                   latent_mean=mean, latent_std=std)
  w = np.asarray(wplus)
  assert w.shape == (1, model.n_latent, 32) and np.all(w == w[:, :1])


def test_projection_computes_the_targets_lpips_features_once(tiny_generator):
  """The projector runs LPIPS's VGG on the targets once per batch (Perceptual's two
  halves); the same projection as a distance that recomputes them at every step."""
  from clip2protect_jax.models.lpips import LPIPS
  model, params, targets, mean, std = tiny_generator
  lp = LPIPS()
  lp_vars = jax.jit(lp.init)(jax.random.key(5), targets[:1], targets[:1])
  halves = projection.lpips_perceptual(lp, lp_vars)
  every_step = projection.Perceptual(lambda x: x, lambda a, b: lp.apply(lp_vars, a, b))
  cfg = projection.ProjectionConfig(steps=3, noise_regularize=1e3, n_mean_latent=256)
  runs = [projection.project(model, params, targets, jax.random.key(2), cfg, perceptual,
                             latent_mean=mean, latent_std=std)
          for perceptual in (halves, every_step)]
  assert np.all(np.abs(np.asarray(runs[0][2]["perceptual"])) > 1e-6)   # random heads: +-
  np.testing.assert_allclose(runs[0][2]["perceptual"], runs[1][2]["perceptual"], rtol=1e-5)
  # Adam (lr 0.1) turns rounding in near-zero gradients into ~1e-4 moves of a few entries.
  diff = np.abs(np.asarray(runs[0][0]) - np.asarray(runs[1][0]))
  assert diff.max() < 2e-3 and diff.mean() < 1e-4, (diff.max(), diff.mean())


def test_noise_regularize_matches_the_official_function():
  torch = pytest.importorskip("torch")

  def official(noises):  # rosinality projector.py
    loss = 0
    for noise in noises:
      size = noise.shape[2]
      while True:
        loss = (loss + (noise * torch.roll(noise, shifts=1, dims=3)).mean().pow(2)
                + (noise * torch.roll(noise, shifts=1, dims=2)).mean().pow(2))
        if size <= 8:
          break
        noise = noise.reshape([-1, 1, size // 2, 2, size // 2, 2]).mean([3, 5])
        size //= 2
    return loss

  rng = np.random.default_rng(0)
  maps = [rng.standard_normal((r, r, 1)).astype(np.float32) + 0.3 for r in (4, 8, 16, 32)]
  ref = official([torch.from_numpy(m.transpose(2, 0, 1)[None]) for m in maps])
  ours = projection.noise_regularize([jnp.asarray(m) for m in maps])
  np.testing.assert_allclose(float(ours), float(ref), rtol=1e-5)


def test_learning_rate_schedule():
  lr = lambda t: float(projection.learning_rate(t, 0.1))
  assert lr(0.0) == 0.0 and abs(lr(0.05) - 0.1) < 1e-7 and abs(lr(0.5) - 0.1) < 1e-7
  assert abs(lr(0.875) - 0.05) < 1e-6 and lr(1.0) == 0.0
  assert abs(lr(0.025) - 0.05) < 1e-7


def test_downsample_is_mean_pooling():
  x = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
  y = projection.downsample_to(x, 4)
  np.testing.assert_allclose(np.asarray(y[0, 0, 0]), np.asarray(x[0, :2, :2].mean((0, 1))))
