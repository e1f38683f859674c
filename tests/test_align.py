"""FFHQ alignment (e4e recipe) against the official outputs, paste-back, and detection.

Photo used: `img14_pretransform.png` of the ffhq_align golden, which is the golden photo
img14 cropped by the recipe (no shrink, no padding), i.e. a real 318x318 photo with one face
whose official landmarks are the stored ones minus the crop's top-left (260, 3).
The ffhq_align golden holds photos of people (../shared/faces/README.md: not to be
committed), so these tests read it from ../shared/golden and skip where it is absent.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import scipy.ndimage
from PIL import Image

from clip2protect_jax import align
from clip2protect_jax.image_io import read_rgb
from clip2protect_jax.parity import ffhq_align as parity_align
from clip2protect_jax.parity.recipe import load_arrays

SHARED_GOLDEN = "../shared/golden"
ALIGN_NPZ = os.path.join(SHARED_GOLDEN, "ffhq_align", "ffhq_align.npz")
pytestmark = pytest.mark.skipif(not os.path.exists(ALIGN_NPZ),
                                reason=f"{ALIGN_NPZ} not present (photo-derived golden data)")


@pytest.fixture(scope="module")
def img14():
  """(photo uint8 [318, 318, 3], its 68 landmarks, golden arrays of img14)."""
  data = load_arrays(SHARED_GOLDEN, "ffhq_align/ffhq_align.npz")
  g = {k[6:]: data[k] for k in data if k.startswith("img14_")}
  photo = read_rgb(os.path.join(SHARED_GOLDEN, "ffhq_align", "img14_pretransform.png"))
  return photo, g["lm"] - np.array([260.0, 3.0]), g


@pytest.fixture(scope="module")
def smooth_photo(img14):
  """The photo blurred (sigma 2): resampling error then stays at a few grey levels."""
  photo, lm, _ = img14
  smooth = scipy.ndimage.gaussian_filter(photo.astype(np.float32), [2, 2, 0])
  return np.rint(smooth).astype(np.uint8), lm


def test_golden_geometry_plan_and_warp():
  """Geometry (1e-9), integers (exact) and the warp (bit-exact)."""
  results = parity_align.run("ffhq_align", SHARED_GOLDEN, {})
  assert all(r.ok for r in results), "\n".join(r.line() for r in results if not r.ok)
  outputs = {r.output for r in results}
  assert {"img14/quad0", "img14/crop", "img14/pad_raw", "img14/transform_data",
          "img14/warp_from_pretransform"} <= outputs


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_GOLDEN, os.pardir, "faces")),
                    reason="../shared/golden and ../shared/faces not present")
def test_golden_end_to_end_from_the_photos():
  """All 4 photos (every shrink/pad combination): pre-transform and output bit-exact."""
  results = parity_align.run("ffhq_align", SHARED_GOLDEN, {})
  assert all(r.ok for r in results), "\n".join(r.line() for r in results if not r.ok)
  assert sum(r.output.endswith("aligned_from_photo") for r in results) == 4
  if importlib.util.find_spec("dlib") is not None:   # detection on dlib's decode: exact
    assert sum(r.output.endswith("landmarks_detected") for r in results) == 4


def test_align_face_from_photo_is_the_official_output(img14):
  photo, lm, g = img14
  aligned = align.align_face(photo, lm)
  np.testing.assert_array_equal(aligned.image, g["aligned"])
  assert not aligned.plan.crop_applied and not aligned.plan.pad_applied
  # Without shrink, the photo corners are the official quad corners (+0.5 convention).
  np.testing.assert_allclose(aligned.corners, g["quad0"] - [260, 3] + 0.5, atol=1e-9)


def test_quad_warp_matches_pil():
  """Our numpy QUAD/BILINEAR equals PIL on random pixels, incl. corners outside the image."""
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
  for data in ([-5.3, 2.1, 3.7, 40.2, 60.5, 33.3, 50.9, -4.4],   # rotated, overhanging
               [0.5, 0.5, 0.5, 37.5, 53.5, 37.5, 53.5, 0.5]):    # the whole image
    ours = align.quad_warp(img, np.array(data), 24)
    ref = np.asarray(Image.fromarray(img).transform((24, 24), Image.Transform.QUAD, data,
                                                    Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(ours, ref)


def _identity_paste(photo, lm, face_size):
  aligned = align.align_face(photo, lm)
  face = aligned.image
  if face_size != face.shape[0]:
    face = np.asarray(Image.fromarray(face).resize((face_size, face_size),
                                                   Image.Resampling.BILINEAR))
  out = align.paste_back(photo, face, aligned.corners, aligned.valid)
  mask = align.paste_mask(photo.shape, aligned.corners, aligned.valid)
  return aligned, out, mask


@pytest.mark.parametrize("face_size", [256, 1024])
def test_paste_back_identity_edit(smooth_photo, face_size):
  """Outside the mask: the photo bit for bit. Inside: resampling error only."""
  photo, lm = smooth_photo
  aligned, out, mask = _identity_paste(photo, lm, face_size)
  outside, inside = mask == 0, mask > 0
  assert outside.sum() > 10000 and inside.sum() > 30000
  np.testing.assert_array_equal(out[outside], photo[outside])
  err = np.abs(out.astype(int) - photo)[inside]
  assert err.max() <= 6 and err.mean() < 1.2, (err.max(), err.mean())
  # A wrongly oriented face (transposed) is caught by the same bounds.
  bad = align.paste_back(photo, aligned.image.transpose(1, 0, 2), aligned.corners,
                         aligned.valid)
  assert np.abs(bad.astype(int) - photo)[inside].mean() > 10


def test_face_at_the_border(smooth_photo):
  """Face cut by the left edge: reflect padding is used, paste-back still round-trips."""
  photo, lm = smooth_photo
  cut = np.ascontiguousarray(photo[:, 100:])
  aligned, out, mask = _identity_paste(cut, lm - [100, 0], 256)
  assert aligned.plan.pad_applied and aligned.plan.pad[0] > 0
  assert aligned.corners[:, 0].min() < 0       # the aligned square leaves the photo
  band = aligned.valid[4]                      # recipe's blur band at the left edge
  assert band > 0 and np.all(mask[:, :int(band)] == 0)
  np.testing.assert_array_equal(out[mask == 0], cut[mask == 0])
  err = np.abs(out.astype(int) - cut)[mask > 0]
  assert err.max() <= 8 and err.mean() < 1.5, (err.max(), err.mean())


def test_bad_inputs_give_specific_errors():
  with pytest.raises(align.FaceAlignmentError, match="too small"):
    align.check_photo(np.zeros((20, 300, 3), np.uint8), "tiny.png")
  with pytest.raises(align.FaceAlignmentError, match="uint8 RGB"):
    align.check_photo(np.zeros((64, 64), np.uint8), "gray.png")
  with pytest.raises(align.FaceAlignmentError, match="no face found"):
    align.select_faces([], "largest", "empty.jpg")
  with pytest.raises(align.FaceAlignmentError, match=r"\(68, 2\)"):
    align.ffhq_geometry(np.zeros((5, 2)))


def test_face_policies_without_detector():
  dets = [align.Detection((0, 0, 10, 10), np.zeros((68, 2))),
          align.Detection((0, 0, 30, 30), np.ones((68, 2))),
          align.Detection((0, 0, 20, 20), np.ones((68, 2)))]
  assert [i for i, _ in align.select_faces(dets, "largest")] == [1]
  assert [i for i, _ in align.select_faces(dets, "last")] == [2]
  assert [i for i, _ in align.select_faces(dets, "all")] == [0, 1, 2]
  assert [i for i, _ in align.select_faces(dets, "0")] == [0]
  assert [i for i, _ in align.select_faces(dets, -1)] == [2]
  with pytest.raises(align.FaceAlignmentError, match=r"face index 3 .* 3 face\(s\)"):
    align.select_faces(dets, 3, "group.jpg")
  with pytest.raises(align.FaceAlignmentError, match="unknown face policy"):
    align.select_faces(dets, "biggest")


# ------------------------------------------------------------------ dlib detection

@pytest.fixture(scope="module")
def dlib_ready():
  pytest.importorskip("dlib")
  try:
    align.dlib_models()
  except align.MissingModelError as e:
    pytest.skip(str(e))


def test_detection_landmarks_match_official(dlib_ready, img14):
  photo, lm, g = img14
  dets = align.detect_faces(photo, source="img14")
  assert len(dets) == 1
  # Detected on the crop instead of the whole photo: the box context differs slightly.
  assert np.abs(dets[0].landmarks - lm).max() <= 3
  assert not dets[0].at_border(photo.shape)
  [(i, det, aligned)] = align.align_photo(photo, source="img14")
  assert i == 0 and np.abs(aligned.image.astype(int) - g["aligned"]).mean() < 8


def test_detection_several_faces_border_and_no_face(dlib_ready, img14):
  photo, _, _ = img14
  small = np.asarray(Image.fromarray(photo).resize((240, 240), Image.Resampling.LANCZOS))
  pad = np.zeros((318, 240, 3), np.uint8)
  pad[:240] = small
  group = np.ascontiguousarray(np.concatenate([photo, pad], axis=1))   # big + small face
  dets = align.detect_faces(group, source="group.jpg")
  assert len(dets) == 2
  [(i, det, _)] = align.align_photo(group, "largest", source="group.jpg")
  assert det.box[0] < 318 and det.area == max(d.area for d in dets)
  assert len(align.align_photo(group, "all", source="group.jpg")) == 2
  with pytest.raises(align.FaceAlignmentError, match=r"group.jpg: face index 2 .* 2 face"):
    align.align_photo(group, 2, source="group.jpg")
  # Face cut by the left edge: found, flagged, still aligned (with reflect padding).
  cut = np.ascontiguousarray(photo[:, 100:])
  [(_, det, aligned)] = align.align_photo(cut, source="cut.jpg")
  assert det.at_border(cut.shape) and aligned.plan.pad_applied
  with pytest.raises(align.FaceAlignmentError, match="flat.png: no face found"):
    align.align_photo(np.full((200, 200, 3), 128, np.uint8), source="flat.png")
  with pytest.raises(align.FaceAlignmentError, match="tiny.png: image is 16x16"):
    align.align_photo(np.zeros((16, 16, 3), np.uint8), source="tiny.png")


def test_16_bit_greyscale_photos_are_read_and_detected_at_their_high_byte(
    dlib_ready, img14, tmp_path):
  photo, _, _ = img14
  grey8 = np.asarray(Image.fromarray(photo).convert("L"))
  path = str(tmp_path / "grey16.png")
  Image.fromarray(grey8.astype(np.uint16) * 257).save(path)   # a 16-bit greyscale PNG
  assert Image.open(path).mode.startswith("I")
  pixels = read_rgb(path)
  np.testing.assert_array_equal(pixels, np.repeat(grey8[..., None], 3, axis=2))
  detect_on = align.read_for_detection(path, pixels)
  np.testing.assert_array_equal(detect_on, pixels)   # not dlib's decode, clipped to white
  [(_, det, _)] = align.align_photo(pixels, source=path, detect_on=detect_on)
  assert det.area > 100 * 100
  Image.fromarray(grey8.astype(np.float32)).save(str(tmp_path / "float.tiff"))
  with pytest.raises(ValueError, match=r"float.tiff: cannot read .*mode F"):
    read_rgb(str(tmp_path / "float.tiff"))


def test_no_face_error_names_a_rotating_exif_tag(dlib_ready, tmp_path):
  import ml_collections

  from clip2protect_jax import inversion
  exif = Image.Exif()
  exif[0x0112] = 6   # "rotate 90 degrees to display": a phone held upright
  path = str(tmp_path / "phone.jpg")
  Image.fromarray(np.full((120, 120, 3), 90, np.uint8)).save(path, exif=exif)
  config = ml_collections.ConfigDict(dict(enabled=True, face_policy="largest",
                                          output_size=64, upsample=1))
  record = inversion.align_one_photo(path, "phone.jpg", config, str(tmp_path))
  assert "EXIF orientation tag is 6" in record["error"] and record["faces"] == []
