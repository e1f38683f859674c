"""The `protect` job end to end on tiny random networks and the example photos."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from clip2protect_jax import (align, checkpoints, evaluation, image_io, pipeline, presets,
                              run_settings, tuning)
from clip2protect_jax.models import stylegan2
from clip2protect_jax.models.lpips import LPIPS

pytestmark = pytest.mark.usefixtures("fast_compiles")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.path.join(ROOT, presets.EXAMPLE_PHOTOS)


def load_config(name: str, arg: str = ""):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs",
                                                                   name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def flat(config) -> dict:
  return {f"{k}.{k2}" if isinstance(v, dict) else k: v2
          for k, v in config.to_dict().items()
          for k2, v2 in (v.items() if isinstance(v, dict) else [(None, v)])}


@pytest.mark.parametrize("arg", ["", "demo", "tiny"])
def test_official_preset_is_the_default_plus_exactly_the_quirks(arg):
  corrected, official = flat(load_config("protect", arg)), flat(load_config("official", arg))
  differ = {k for k in corrected if corrected[k] != official[k]}
  assert differ == set(presets.OFFICIAL_QUIRKS)
  for field, value in presets.OFFICIAL_QUIRKS.items():
    assert official[field] == value and corrected[field] != value
  ts = pipeline.tuning_settings(load_config("official", arg))
  ps = pipeline.protect_settings(load_config("official", arg))
  assert ts.schedule == "cumulative"
  assert ps.official_clip_shift and ps.official_output_step and ps.official_dodging
  ps = pipeline.protect_settings(load_config("protect", arg))
  assert not (ps.official_clip_shift or ps.official_output_step or ps.official_dodging)


def test_paper_settings_in_the_default_preset():
  c = load_config("protect")
  ts, ps = pipeline.tuning_settings(c), pipeline.protect_settings(c)
  assert (ts.steps, ts.learning_rate, ts.loss_resolution, ts.mse_weight) == (150, 5e-4, 256,
                                                                              0.1)
  assert ts.schedule == "per_image" and ts.max_resolution == 0   # every layer, per image
  assert (ps.steps, ps.learning_rate, ps.latent_weight, ps.adversarial_weight,
          ps.clip_weight) == (50, 0.01, 0.01, 0.7, 0.3)
  assert ps.trainable_rows == tuple(range(8, 18)) and ps.noise_max_resolution == 256
  assert c.generator.size == 1024 and c.clip.preset == "ViT-B/32"
  assert set(c.fr.surrogates) | set(c.fr.victims) == {"ir152", "irse50", "facenet",
                                                      "mobile_face"}


def test_config_errors_are_specific(tmp_path):
  c = load_config("protect", "tiny")
  c.fr.victims = ("mobile_face",)
  with pytest.raises(ValueError, match="both surrogate and victim"):
    pipeline.check_inputs(c)
  c = load_config("protect", "tiny")
  c.fr.surrogates = ("no_such_model",)
  with pytest.raises(KeyError, match="unknown FR model"):
    pipeline.check_inputs(c)
  c = load_config("protect", "tiny")
  c.target.photo = str(tmp_path / "missing.jpg")
  with pytest.raises(FileNotFoundError, match="config.target.photo"):
    pipeline.check_inputs(c)
  c = load_config("protect", "tiny")   # a crop cut by the photo's edge (numpy would clip)
  with Image.open(c.target.photo) as im:
    c.target.crop = (0, im.height + 1, 0, im.width)
  with pytest.raises(ValueError, match=r"does not lie inside .*obama.jpg \(\d+ rows"):
    pipeline.check_inputs(c)
  c = load_config("protect", "tiny")   # once found only after the inversion
  Image.fromarray(np.full((120, 120, 3), 90, np.uint8)).save(tmp_path / "flat.png")
  c.target.photo, c.target.crop = str(tmp_path / "flat.png"), ()
  with pytest.raises(align.FaceAlignmentError, match=r"flat.png: no face found .*80 px\. "
                     r"In a target photo, .*config.target.crop \(or eval_crop\)"):
    pipeline.check_inputs(c)
  c = load_config("official", "tiny")   # one generator carried through every face
  c.num_shards = 2
  with pytest.raises(ValueError, match="cannot be split into shards"):
    pipeline.check_inputs(c)
  # Each of these once stopped the job only after aligning (or inverting, tuning, or
  # evaluating) every photo, or skipped every photo as unalignable.
  missing = str(tmp_path / "missing")
  for field, value, error, message in (
      ("generator.weights", missing, FileNotFoundError, "generator weights .*--kind=stylegan2"),
      ("clip.weights", missing, FileNotFoundError, "CLIP weights .*--kind=clip"),
      ("fr.weights_dir", missing, FileNotFoundError, "FR model mobile_face weights"),
      ("method", "e4e", FileNotFoundError, "e4e weights"),
      ("clip.preset", "ViT-B/23", ValueError, "unknown CLIP preset"),
      ("generator.dtype", "bf16", ValueError, "generator.dtype='bf16': use one of"),
      ("generator.conv_impl", "groupd", ValueError, "generator.conv_impl='groupd'"),
      ("generator.size", 24, ValueError, "generator.size=24: use a power of two"),
      ("align.face_policy", "biggest", ValueError, "face_policy='biggest'"),
      ("align.on_error", "ignore", ValueError, "on_error='ignore'"),
      ("batch_size", 0, ValueError, "batch_size=0: use 1 or more"),
      ("protect.num_aug", 0, ValueError, "num_aug=0"),
      ("protect.trainable_rows", (4, 8), ValueError, r"\[8\] out of range.*8 W\+ rows"),
      ("evaluate.fars", (0.05,), ValueError, "no threshold at FAR"),
      ("projection.steps", 0, ValueError, "projection.steps=0: use 1 or more"),
      ("tune.lpips_weight", 1.0, FileNotFoundError, "LPIPS weights")):
    c = load_config("protect", "tiny")
    section, _, name = field.rpartition(".")
    (c[section] if section else c)[name] = value
    if field == "tune.lpips_weight":
      c.tune.lpips_weights = missing
    with pytest.raises(error, match=message):
      pipeline.check_inputs(c)
  # Every missing folder in one error, each with its config field (a folder two stages use:
  # once), instead of one per run.
  c = load_config("protect", "tiny")
  c.generator.weights = c.clip.weights = c.projection.lpips_weights = missing
  c.tune.lpips_weights, c.tune.lpips_weight = missing + "_vgg", 1.0
  c.projection.lpips = 1.0
  with pytest.raises(FileNotFoundError) as err:
    pipeline.check_inputs(c)
  lines = str(err.value).splitlines()
  assert lines[0] == "weights are missing for 4 networks:"
  assert [line.split(":")[0] for line in lines[1:]] == [
      "- config.generator.weights", "- config.projection.lpips_weights",
      "- config.clip.weights", "- config.tune.lpips_weights"]
  assert "config.projection.lpips=0 (MSE-only projection) to leave it out" in lines[2]


def test_box_to_aligned_inverts_the_corner_map():
  # A rotated, scaled square in the photo: aligned (a, b) -> nw + a (ne - nw) + b (sw - nw).
  nw, ne, sw = np.array([100.0, 50.0]), np.array([180.0, 110.0]), np.array([40.0, 130.0])
  corners = np.stack([nw, sw, sw + ne - nw, ne])
  pts_ab = np.array([[0.25, 0.3], [0.7, 0.3], [0.7, 0.8], [0.25, 0.8]])
  photo_pts = nw + pts_ab[:, :1] * (ne - nw) + pts_ab[:, 1:] * (sw - nw)
  box = (*photo_pts.min(0), *photo_pts.max(0))
  out = align.box_to_aligned(box, corners, 64)
  # The photo box contains the rotated quad, so its aligned box contains the original one.
  assert out[0] <= 0.25 * 64 + 1e-9 and out[1] <= 0.3 * 64 + 1e-9
  assert out[2] >= 0.7 * 64 - 1e-9 and out[3] >= 0.8 * 64 - 1e-9
  # An axis-aligned square maps boxes exactly.
  square = np.array([[10.0, 20.0], [10.0, 120.0], [110.0, 120.0], [110.0, 20.0]])
  np.testing.assert_allclose(align.box_to_aligned((35, 45, 85, 95), square, 200),
                             [50, 50, 150, 150])
  np.testing.assert_allclose(align.box_to_aligned((0, 0, 500, 500), square, 200),
                             [0, 0, 200, 200])


def test_cumulative_tuning_split_into_batches_equals_one_sequence():
  gen = stylegan2.Generator(16, style_dim=32, n_mlp=2, channel_max=16)
  params = stylegan2.init_params(gen, jax.random.key(0))
  w = jax.random.normal(jax.random.key(1), (3, gen.n_latent, 32)) * 0.3
  noise = stylegan2.make_noise(jax.random.key(2), 16, batch=3)
  targets = jax.random.uniform(jax.random.key(3), (3, 16, 16, 3), minval=-1, maxval=1)
  ts = tuning.TuningSettings(steps=2, learning_rate=1e-2, loss_resolution=16, mse_weight=1.0,
                             lpips_weight=0.0, schedule="cumulative")
  lp = LPIPS()
  whole = tuning.tune(gen, lp, ts, params, None, w, noise, targets)
  first = tuning.tune(gen, lp, ts, params, None, w[:2], [m[:2] for m in noise], targets[:2])
  second = tuning.tune(gen, lp, ts, params, None, w[2:], [m[2:] for m in noise], targets[2:],
                       carry=first.carry)
  np.testing.assert_allclose(second.losses[:, 0], whole.losses[:, 2], rtol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         second.params.image(0), whole.params.image(2))


def test_cumulative_resume_keeps_the_prefix_its_carry_follows():
  ids = ["a", "b", "c", "d"]
  assert pipeline.cumulative_resume(ids, [], None) == []
  assert pipeline.cumulative_resume(ids, ["b", "a"], "b") == ["a", "b"]
  # Stopped after writing c but before saving its carry: c is redone.
  assert pipeline.cumulative_resume(ids, ["a", "b", "c"], "b") == ["a", "b"]
  # Stopped in the first batch, before any carry was saved: everything is redone.
  assert pipeline.cumulative_resume(ids, ["a"], None) == []
  with pytest.raises(RuntimeError, match="face a is not done but later faces are"):
    pipeline.cumulative_resume(ids, ["b", "c"], "c")   # a photo added before them
  with pytest.raises(RuntimeError, match="saved after face c, but the finished faces end at b"):
    pipeline.cumulative_resume(ids, ["a", "b"], "c")   # c's result deleted


def test_photo_box_of_pre_aligned_photos_is_the_fr_box_scaled_to_the_photo():
  """dlib's victim locates the face by this box; a pre-aligned photo's record box is the
  whole photo, which gives dlib a descriptor of another face."""
  c = load_config("protect", "tiny")   # 32 px generator
  arrays = {"boxes": np.array([[0.0, 0.0, 100.0, 80.0]]),
            "corners": np.array([[[0, 0], [0, 80], [100, 80], [100, 0]]], np.float32)}
  box = np.array([8.0, 4.0, 24.0, 28.0])
  assert pipeline.photo_box(c, arrays, 0, box) == [0.0, 0.0, 100.0, 80.0]   # aligned here
  c.align.enabled = False
  assert pipeline.photo_box(c, arrays, 0, box) == [25.0, 10.0, 75.0, 70.0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  if not os.path.isdir(os.path.join(PHOTOS, "sources")):
    pytest.skip(f"example photos missing: run python tools/fetch_assets.py ({PHOTOS})")
  cwd = os.getcwd()
  os.chdir(ROOT)  # the preset's paths are relative to the repository
  try:
    workdir = str(tmp_path_factory.mktemp("protect"))
    config = load_config("protect", "tiny")
    config.devices = 1   # the reference of test_two_devices_give_what_one_gives
    metrics = pipeline.run(config, workdir)
    yield config, workdir, metrics
  finally:
    os.chdir(cwd)


def read_result(workdir, fid):
  with open(os.path.join(workdir, "protect", "results", fid + ".json")) as f:
    return json.load(f)


def test_tiny_run_writes_every_output(tiny_run):
  config, workdir, metrics = tiny_run
  ids = ["astronaut.png_f0", "biden.jpg_f0"]
  out = os.path.join(workdir, "protect")
  for fid in ids:
    face = image_io.read_rgb(os.path.join(out, "faces", fid + ".png"))
    assert face.shape == (32, 32, 3)
    r = read_result(workdir, fid)
    assert set(r["similarity"]) == {"mobile_face", "irse50"}
    for sims in r["similarity"].values():
      assert sims["source"]["original"] == pytest.approx(1.0, abs=1e-5)
      assert set(sims["target"]) == {"original", "reconstruction", "protected"}
    assert r["tune"]["final_loss"] < r["tune"]["first_loss"]
  photo = image_io.read_rgb(os.path.join(out, "photos", "biden.jpg.png"))
  original = image_io.read_rgb(os.path.join(PHOTOS, "sources", "biden.jpg"))
  assert photo.shape == original.shape
  changed = np.any(photo != original, axis=-1)
  assert 0 < changed.mean() < 0.5   # the face region only
  assert metrics["n_faces"] == 2 and metrics["faces_protected_now"] == 2
  assert set(metrics["models"]) == {"mobile_face", "irse50", "dlib"}
  rates = metrics["models"]["irse50"]["by_image"]["protected"]["far"]
  assert set(rates) == {"0.1", "0.01", "0.001"}
  dlib_face = metrics["dlib_faces"]["biden.jpg_f0"]
  assert 0.0 < dlib_face["target_distance"]["original"] < 2.0
  with open(os.path.join(out, "report.html")) as f:
    html = f.read()
  assert "biden.jpg_f0" in html and "red lipstick" in html and "RANDOM" in html
  assert html.count("data:image/png;base64,") == 8


def test_rerun_skips_and_one_face_alone_equals_the_batch(tiny_run):
  config, workdir, _ = tiny_run
  before = read_result(workdir, "biden.jpg_f0")
  face_before = image_io.read_rgb(os.path.join(workdir, "protect", "faces", "biden.jpg_f0.png"))
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    # A record of an older version (without the inversion's fields) is accepted, and gains
    # them once invert/'s records have checked them.
    record = os.path.join(workdir, "protect", "settings.json")
    with open(record) as f:
      full = json.load(f)
    image_io.atomic_write_json(record, {k: v for k, v in full.items()
                                        if not k.startswith(("align.", "projection.",
                                                             "fingerprints."))})
    codes = os.path.join(workdir, "invert", "latents")
    os.rename(codes, codes + ".away")   # such faces with their codes gone: refused
    with pytest.raises(run_settings.SettingsMismatchError, match="made by an older version"):
      pipeline.run(config, workdir)
    os.rename(codes + ".away", codes)
    assert pipeline.run(config, workdir)["faces_protected_now"] == 0
    with open(record) as f:
      assert json.load(f) == full
    with open(os.path.join(workdir, "invert", "summary.json")) as f:
      assert json.load(f)["weights"].startswith("projection (")   # what made the codes
    other = config.copy_and_resolve_references()
    other.prompt = "purple eyeshadow"
    with pytest.raises(run_settings.SettingsMismatchError,
                       match="prompt: 'red lipstick' there, 'purple eyeshadow' now"):
      pipeline.run(other, workdir)
    # The protected faces depend on the inversion's settings too: its remedy (delete
    # invert/, recomputed with these) must not leave faces made from the old codes.
    other = config.copy_and_resolve_references()
    other.align.upsample, other.projection.steps = 2, 7
    with pytest.raises(run_settings.SettingsMismatchError,
                       match=r"protect/settings.json\): align.upsample: 1 there, 2 now.*"
                             r"projection.steps: 5 there, 7 now"):
      pipeline.run(other, workdir)
    os.remove(os.path.join(workdir, "protect", "results", "biden.jpg_f0.json"))
    photo = os.path.join(workdir, "protect", "photos", "biden.jpg.png")
    stale = np.zeros_like(image_io.read_rgb(photo))
    image_io.write_png(photo, stale)   # a pasted-back photo older than its redone face
    metrics = pipeline.run(config, workdir)
  finally:
    os.chdir(cwd)
  assert metrics["faces_protected_now"] == 1
  assert np.any(image_io.read_rgb(photo) != stale)   # rebuilt with the redone face
  after = read_result(workdir, "biden.jpg_f0")
  face_after = image_io.read_rgb(os.path.join(workdir, "protect", "faces", "biden.jpg_f0.png"))
  # Alone (padded batch) == in a batch with the astronaut: same keys, same noise, same steps.
  assert np.abs(face_after.astype(int) - face_before.astype(int)).max() <= 1
  for m, sims in before["similarity"].items():
    np.testing.assert_allclose(after["similarity"][m]["target"]["protected"],
                               sims["target"]["protected"], atol=1e-4)


def test_dodging_reference_is_another_photo_of_the_source(tiny_run, tmp_path):
  """With evaluate.source_references, "source" similarities are to each source's reference
  photo: here the target's evaluation photo, so they must equal the "target" ones."""
  config, workdir, _ = tiny_run
  config = config.copy_and_resolve_references()
  refs = tmp_path / "refs"
  refs.mkdir()
  config.evaluate.source_references = str(refs)
  work = str(tmp_path / "w")
  shutil.copytree(os.path.join(workdir, "invert"), os.path.join(work, "invert"))
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    with pytest.raises(FileNotFoundError, match=r"astronaut.png needs exactly one"):
      pipeline.run(config, work)   # before any work
    assert not os.path.exists(os.path.join(work, "protect", "results"))
    Image.fromarray(np.full((120, 120, 3), 90, np.uint8)).save(refs / "astronaut.png")
    os.symlink(os.path.join(ROOT, config.target.eval_photo), refs / "biden.jpg")
    with pytest.raises(align.FaceAlignmentError, match=r"no face found.*reference of .*astr"):
      pipeline.check_inputs(config)
    os.remove(refs / "astronaut.png")
    os.symlink(os.path.join(ROOT, config.target.eval_photo), refs / "astronaut.jpg")
    group = config.copy_and_resolve_references()
    group.align.face_policy = "all"   # one reference per photo cannot serve several faces
    with pytest.raises(ValueError, match="not 'all'"):
      pipeline.check_inputs(group)
    metrics = pipeline.run(config, work)
    plain = config.copy_and_resolve_references()
    plain.evaluate.source_references = ""
    with pytest.raises(run_settings.SettingsMismatchError, match="source_references"):
      pipeline.run(plain, work)
    # Another photo under a finished face's reference path: its "source" similarities were
    # measured on the old one.
    os.remove(refs / "astronaut.jpg")
    os.symlink(os.path.join(ROOT, config.target.photo), refs / "astronaut.jpg")
    with pytest.raises(run_settings.SettingsMismatchError,
                       match=r"face astronaut.png_f0 was measured against another dodging"):
      pipeline.run(config, work)
    os.remove(refs / "astronaut.jpg")
    os.symlink(os.path.join(ROOT, config.target.eval_photo), refs / "astronaut.jpg")
  finally:
    os.chdir(cwd)
  assert metrics["dodging_reference"] == str(refs)
  for fid in ("astronaut.png_f0", "biden.jpg_f0"):
    r = read_result(work, fid)
    assert r["source_reference"] == str(refs / (fid.split(".")[0] + ".jpg"))
    for sims in r["similarity"].values():
      for kind in evaluation.IMAGE_KINDS:
        assert sims["source"][kind] == pytest.approx(sims["target"][kind], abs=1e-5)
    dlib_face = metrics["dlib_faces"][fid]
    assert dlib_face["source_distance"] == pytest.approx(dlib_face["target_distance"])


def assert_same_face(reference: str, workdir: str, fid: str) -> None:
  """Face `fid` of `workdir`'s protect job as in `reference`'s: protected face and
  reconstruction within one 8-bit level, target similarities and W+ codes within 1e-4."""
  for sub in ("faces", "reconstructions"):
    a, b = (image_io.read_rgb(os.path.join(w, "protect", sub, fid + ".png")).astype(int)
            for w in (reference, workdir))
    assert np.abs(a - b).max() <= 1, (fid, sub)
  one, other = read_result(reference, fid), read_result(workdir, fid)
  for m, sims in one["similarity"].items():
    for kind in evaluation.IMAGE_KINDS:
      assert other["similarity"][m]["target"][kind] == pytest.approx(
          sims["target"][kind], abs=1e-4), (fid, m, kind)
  codes = [np.load(os.path.join(w, "invert", "latents", fid + ".npz"))["wplus"]
           for w in (reference, workdir)]
  np.testing.assert_allclose(codes[0], codes[1], atol=1e-4)


def test_two_devices_give_what_one_gives(tiny_run, tmp_path):
  """Data parallelism (parallel.py) on 2 fake CPU devices, in a process of its own: the
  unit checks of tests/parallel_checks.py (tuning in each schedule, projection, generation:
  2 devices == 1, what each step exchanges), then the tiny job split over both devices,
  whose faces must be the one-device run's."""
  _, workdir, _ = tiny_run
  work = str(tmp_path / "two")
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "parallel_checks.py"),
                         work], cwd=ROOT, capture_output=True, text=True, timeout=1200,
                        env={**os.environ, "PYTHONPATH": ROOT})
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  assert "all parallel checks passed" in proc.stdout
  for fid in ("astronaut.png_f0", "biden.jpg_f0"):
    assert_same_face(workdir, work, fid)
    assert read_result(work, fid)["devices"] == 2 and read_result(workdir, fid)["devices"] == 1


def test_shards_of_one_workdir_give_what_one_run_gives(tiny_run, tmp_path):
  """The tiny job in two shards on one workdir (shards.py; in this process, one after the
  other: tests/test_shards.py runs shards as processes at once), then the whole run
  (num_shards=1), which writes metrics.json and report.html over both faces: each face as
  in the one-run reference."""
  config, workdir, _ = tiny_run
  work = str(tmp_path / "shared")
  shutil.copytree(os.path.join(workdir, "invert"), os.path.join(work, "invert"))
  ids = ["astronaut.png_f0", "biden.jpg_f0"]
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    for i in range(2):
      shard = config.copy_and_resolve_references()
      shard.update(num_shards=2, shard_index=i)
      shard.evaluate.dlib_victim = False   # host-side, and evaluated by the whole run below
      metrics = pipeline.run(shard, work)
      assert metrics["face_ids"] == [ids[i]] and metrics["faces_protected_now"] == 1
      with open(os.path.join(work, "protect", f"metrics.shard-{i}-of-2.json")) as f:
        assert json.load(f)["shard"] == {"index": i, "count": 2}
      assert os.path.exists(os.path.join(work, "protect", f"report.shard-{i}-of-2.html"))
      assert not os.path.exists(os.path.join(work, "protect", "metrics.json"))
    whole = config.copy_and_resolve_references()
    whole.update(num_shards=1, shard_index=1)   # the shards' command, num_shards=1
    metrics = pipeline.run(whole, work)
  finally:
    os.chdir(cwd)
  assert metrics["faces_protected_now"] == 0 and metrics["face_ids"] == ids
  assert metrics["shard"] == {"index": 0, "count": 1}
  assert os.path.exists(os.path.join(work, "protect", "report.html"))
  for fid in ids:   # each alone in a padded batch == in the reference's batch of two
    assert_same_face(workdir, work, fid)


def test_result_settings_tell_what_the_weights_and_target_photos_hold(tmp_path):
  """Another photo under the target's path, or other weights converted into a weights
  folder, must not pass for the ones the finished faces were made with."""
  config = load_config("protect", "tiny")
  target = tmp_path / "target.png"
  Image.fromarray(np.full((8, 8, 3), 10, np.uint8)).save(target)
  config.target.photo = config.target.eval_photo = str(target)
  config.fr.weights_dir = str(tmp_path)   # each model's folder under it: missing, left out
  config.clip.weights = str(tmp_path / "clip")
  checkpoints.save(config.clip.weights, {"w": np.zeros(1)}, {"kind": "clip",
                                                             "source_sha256": "a"})
  # The projection's and the tuning's LPIPS folders: two fields, though both "lpips".
  config.projection.lpips, config.projection.lpips_weights = 1.0, "random"
  config.tune.lpips_weight, config.tune.lpips_weights = 1.0, config.clip.weights
  first = pipeline.result_settings(config)
  assert first["fingerprints.generator"] == first["fingerprints.projection.lpips"] == "random"
  assert first["fingerprints.clip"] == first["fingerprints.tune.lpips"] == "source_sha256 a"
  assert not any(k.startswith("fingerprints.fr.") for k in first)
  Image.fromarray(np.full((8, 8, 3), 11, np.uint8)).save(target)
  shutil.rmtree(config.clip.weights)   # converted again from another checkpoint
  checkpoints.save(config.clip.weights, {"w": np.zeros(1)}, {"kind": "clip",
                                                             "source_sha256": "b"})
  second = pipeline.result_settings(config)
  assert {k for k in first if first[k] != second[k]} == {
      "fingerprints.target.photo", "fingerprints.target.eval_photo", "fingerprints.clip",
      "fingerprints.tune.lpips"}


def test_protect_settings_reject_bad_values():
  c = load_config("protect", "tiny")
  c.protect.mode = "hide"
  with pytest.raises(ValueError, match="protect.mode='hide': use impersonation or dodging"):
    pipeline.protect_settings(c)
  c = load_config("protect", "tiny")
  c.tune.schedule = "sometimes"
  with pytest.raises(ValueError, match="tune.schedule='sometimes': use one of per_image"):
    pipeline.tuning_settings(c)
  c = load_config("protect", "tiny")
  c.tune.max_resolution = 48
  with pytest.raises(ValueError, match="tune.max_resolution=48: use 0"):
    pipeline.tuning_settings(c)
  c = load_config("protect", "tiny")
  c.tune.steps = -1
  with pytest.raises(ValueError, match="tune.steps=-1: use 0 or more"):
    pipeline.tuning_settings(c)


def test_official_cumulative_run_resumes_with_its_carried_generator(tmp_path):
  """Official preset (cumulative tuning), one face per batch. A run stopped after the first
  face and resumed with both gives the second face exactly what an uninterrupted run gives:
  the carried generator comes back from protect/tune_carry. A run stopped between writing
  a face and saving its carry redoes that face; a carry ahead of the results, or other
  tuned layers, fails loudly."""
  if not os.path.isdir(os.path.join(PHOTOS, "sources")):
    pytest.skip(f"example photos missing: run python tools/fetch_assets.py ({PHOTOS})")
  first_only, both = tmp_path / "first", tmp_path / "both"
  first_only.mkdir()
  both.mkdir()
  for name in ("astronaut.png", "biden.jpg"):
    shutil.copy(os.path.join(PHOTOS, "sources", name), both / name)
  shutil.copy(os.path.join(PHOTOS, "sources", "astronaut.png"), first_only / "astronaut.png")

  def run(photos, workdir, max_resolution=0):
    config = load_config("official", "tiny")
    config.update(photos=str(photos), batch_size=1)
    config.tune.max_resolution = max_resolution
    config.evaluate.dlib_victim = False
    config.report.enabled = False
    return pipeline.run(config, str(workdir))

  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    run(both, tmp_path / "uninterrupted")
    run(first_only, tmp_path / "resumed")
    with pytest.raises(run_settings.SettingsMismatchError,
                       match="tune.max_resolution: 0 there, 8 now"):
      run(both, tmp_path / "resumed", max_resolution=8)
    carry = tmp_path / "resumed" / "protect" / "tune_carry"
    shutil.copytree(carry, tmp_path / "carry_after_astronaut")
    assert run(both, tmp_path / "resumed")["faces_protected_now"] == 1
    results = {w: read_result(str(tmp_path / w), "biden.jpg_f0")
               for w in ("uninterrupted", "resumed")}
    faces = {w: image_io.read_rgb(str(tmp_path / w / "protect" / "faces" / "biden.jpg_f0.png"))
             for w in ("uninterrupted", "resumed")}
    # A run stopped after writing biden but before saving its carry redoes biden.
    shutil.rmtree(carry)
    shutil.copytree(tmp_path / "carry_after_astronaut", carry)
    assert run(both, tmp_path / "resumed")["faces_protected_now"] == 1
    np.testing.assert_array_equal(
        image_io.read_rgb(str(tmp_path / "resumed" / "protect" / "faces" / "biden.jpg_f0.png")),
        faces["resumed"])
    # A save_carry stopped between its renames (old carry moved aside, new one complete
    # beside it) is completed on resume.
    os.replace(carry, f"{carry}.tmp")
    shutil.copytree(tmp_path / "carry_after_astronaut", f"{carry}.old")
    assert pipeline.carry_last_id(str(carry.parent)) == "biden.jpg_f0" and carry.is_dir()
    os.remove(tmp_path / "resumed" / "protect" / "results" / "biden.jpg_f0.json")
    with pytest.raises(RuntimeError, match="sequence changed"):
      run(both, tmp_path / "resumed")   # the carry is the one saved after biden
  finally:
    os.chdir(cwd)
  np.testing.assert_allclose(results["resumed"]["tune"]["first_loss"],
                             results["uninterrupted"]["tune"]["first_loss"], rtol=1e-5)
  diff = faces["resumed"].astype(int) - faces["uninterrupted"].astype(int)
  assert np.abs(diff).max() <= 1
