"""Configs, CLI, checkpoints, the converter tool and the generate job."""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from clip2protect_jax import checkpoints, generate, presets, run_settings, weights
from clip2protect_jax.convert.common import WeightsMismatchError
from clip2protect_jax.convert.stylegan2 import convert_generator
from clip2protect_jax.models import stylegan2
from configs import generate as generate_config
from tests.test_stylegan2 import TINY, tiny_torch_state_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_generate_config(weights_path="random") -> ml_collections.ConfigDict:
  config = generate_config.get_config("tiny")
  config.generator.update(size=16, style_dim=32, n_mlp=2, channel_max=16,
                          weights=weights_path)
  config.num_images = 3
  config.batch_size = 2
  config.mean_latent_samples = 32
  return config


def test_configs_are_locked_and_variants_differ():
  paper, demo, tiny = (generate_config.get_config(a) for a in ("", "demo", "tiny"))
  assert paper.generator.size == 1024 and paper.generator.weights.startswith("checkpoints/")
  assert demo.generator.size == 256 and demo.generator.weights == "random"
  assert tiny.generator.channel_max < 512
  with pytest.raises(ValueError, match="unknown config argument"):
    generate_config.get_config("huge")
  paper.lock()
  with pytest.raises(AttributeError):
    paper.generator.sise = 512  # a typo must fail, not add a field


def test_cli_rejects_misspelt_override():
  proc = subprocess.run(
      [sys.executable, "-m", "clip2protect_jax.main", "--config=configs/generate.py:tiny",
       "--config.generator.sise=8", "--workdir=/tmp/never_written"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  # One line naming the flag and the fields there, not ml_collections' KeyError chain.
  assert proc.stderr.strip().splitlines() == [
      "FATAL Flags parsing error: --config.generator.sise=8: config.generator has no field "
      "'sise'. Did you mean size? Its fields: blur_kernel, channel_max, channel_multiplier, "
      "conv_impl, dtype, lr_mlp, modulation, n_mlp, precision, size, style_dim, "
      "upsample_impl, weights."]
  config = generate_config.get_config("tiny")
  assert presets.unknown_override(config, ["--workdir=w", "--config.seed=3"]) is None
  assert presets.unknown_override(config, ["--config.seed.x=3"]) == (
      "--config.seed.x=3: config.seed is a value, not a section with fields")


def test_cli_comma_lists_become_tuples():
  """README's `--config.fr.surrogates=irse50,facenet`: ml_collections parses it as the ONE
  item 'irse50,facenet'; main splits it (numbers parse as tuples by themselves)."""
  script = ("import sys; from absl import app; from clip2protect_jax import main\n"
            "def show(argv):\n"
            "  c = main._CONFIG.value; print('PARSED', c.fr.surrogates)\n"
            "  main.split_comma_lists(c)\n"
            "  print('SPLIT', c.fr.surrogates, c.fr.victims, c.protect.trainable_rows)\n"
            "app.run(show)")
  proc = subprocess.run(
      [sys.executable, "-c", script, "--config=configs/protect.py:tiny", "--workdir=/tmp/x",
       "--config.fr.surrogates=irse50, facenet", "--config.fr.victims=ir152",
       "--config.protect.trainable_rows=8,9,10"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "PARSED ('irse50, facenet',)" in proc.stdout
  assert "SPLIT ('irse50', 'facenet') ('ir152',) (8, 9, 10)" in proc.stdout


def test_torch_load_failures_are_one_line_without_unsafe_advice(tmp_path):
  torch = pytest.importorskip("torch")
  from clip2protect_jax.convert.common import torch_load_failure
  (tmp_path / "text.pt").write_text("not a checkpoint")
  torch.save({"f": os.system}, tmp_path / "code.pt")   # a blocked module's function
  torch.save({"r": range(3)}, tmp_path / "object.pt")   # an object not allowlisted
  for name in ("text.pt", "code.pt", "object.pt"):
    with pytest.raises(Exception) as err:
      torch.load(tmp_path / name, weights_only=True)
    why = torch_load_failure(err.value)
    assert "\n" not in why and "weights_only=False" not in why and "Re-running" not in why
    assert why.startswith(type(err.value).__name__ + ": ")


def test_checkpoint_roundtrip_and_mismatch(tmp_path):
  tree = {"params": {"a": np.arange(6, dtype=np.float32).reshape(2, 3)},
          "noise": [np.ones((1, 4, 4, 1), np.float32)]}
  checkpoints.save(str(tmp_path / "ck"), tree, {"kind": "test"})
  restored = checkpoints.restore(str(tmp_path / "ck"), jax.eval_shape(lambda: tree))
  np.testing.assert_array_equal(restored["params"]["a"], tree["params"]["a"])
  assert checkpoints.load_metadata(str(tmp_path / "ck")) == {"kind": "test"}
  with pytest.raises(FileExistsError):
    checkpoints.save(str(tmp_path / "ck"), tree, {})  # never overwrite finished work
  wrong = {"params": {"a": np.zeros((2, 4)), "b": np.zeros(1)}, "noise": []}
  with pytest.raises(WeightsMismatchError) as err:
    checkpoints.restore(str(tmp_path / "ck"), wrong)
  msg = str(err.value)
  assert "params/b" in msg and "noise/0" in msg and "params/a has shape (2, 3)" in msg
  with pytest.raises(FileNotFoundError, match="convert_checkpoint"):
    checkpoints.restore(str(tmp_path / "nothing"), tree)


def test_convert_tool_end_to_end(tmp_path):
  torch = pytest.importorskip("torch")
  sd = tiny_torch_state_dict(seed=7)
  latent_avg = np.random.default_rng(0).standard_normal(32).astype(np.float32)
  pt = tmp_path / "g.pt"
  torch.save({"g_ema": {k: torch.from_numpy(v) for k, v in sd.items()},
              "latent_avg": torch.from_numpy(latent_avg)}, pt)
  out = tmp_path / "converted"
  cmd = [sys.executable, "tools/convert_checkpoint.py", "--kind=stylegan2", f"--input={pt}",
         f"--output={out}", "--size=16", "--style_dim=32", "--n_mlp=2", "--channel_max=16"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  meta = checkpoints.load_metadata(str(out))
  assert meta["kind"] == "stylegan2" and meta["has_latent_avg"]
  assert len(meta["source_sha256"]) == 64

  loaded = weights.load_generator(tiny_generate_config(str(out)).generator,
                                  jax.random.key(0))
  want_params, want_noise = convert_generator(sd, **TINY)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, want_params)
  for a, b in zip(loaded.noise, want_noise):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(loaded.latent_avg, latent_avg)
  assert "converted checkpoint" in loaded.description

  # A second conversion to the same folder must not touch the finished one.
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "exists" in proc.stderr

  # A config describing another architecture fails naming the field.
  other = tiny_generate_config(str(out))
  other.generator.size = 32
  with pytest.raises(ValueError, match="size=16 in the checkpoint vs 32"):
    weights.load_generator(other.generator, jax.random.key(0))


def test_missing_weights_folder_explains_how_to_convert(tmp_path):
  config = tiny_generate_config(str(tmp_path / "absent"))
  with pytest.raises(FileNotFoundError, match="convert_checkpoint.py --kind=stylegan2"):
    weights.load_generator(config.generator, jax.random.key(0))
  (tmp_path / "stylegan2-ffhq-config-f.pt").write_bytes(b"")   # the .pt itself, unconverted
  config = tiny_generate_config(str(tmp_path / "stylegan2-ffhq-config-f.pt"))
  with pytest.raises(FileNotFoundError, match=r"is a file .*convert_checkpoint.py"):
    weights.load_generator(config.generator, jax.random.key(0))


def test_generate_job_writes_images_and_resumes(tmp_path):
  config = tiny_generate_config()
  summary = generate.run(config, str(tmp_path))
  assert "RANDOM weights" in summary["weights"]
  paths = [tmp_path / p for p in summary["images"]]
  assert len(paths) == 3 and all(p.exists() for p in paths)
  first = [p.read_bytes() for p in paths]
  assert first[0] != first[1]  # different z per image
  with open(tmp_path / "summary.json") as f:
    assert json.load(f)["written_now"] == 3

  # Delete one image: a rerun recomputes exactly that one, identically (same z per index
  # whatever the batch composition), and keeps the others.
  os.remove(paths[1])
  mtime0 = os.path.getmtime(paths[0])
  summary = generate.run(config, str(tmp_path))
  assert summary["written_now"] == 1 and summary["kept_from_earlier_runs"] == 2
  assert paths[1].read_bytes() == first[1]
  assert os.path.getmtime(paths[0]) == mtime0
  config.truncation = 0.5   # other settings: the kept images would be mislabelled
  with pytest.raises(run_settings.SettingsMismatchError, match="truncation: 0.7 there, 0.5"):
    generate.run(config, str(tmp_path))


def test_settings_records_compare_optional_fields_only_where_both_have_them(tmp_path):
  path = str(tmp_path / "settings.json")
  run_settings.check(path, {"a": 1, "b.c": [1, 2]}, False, "the results")
  # Recorded by a newer version only, or left out while unused: not compared when absent.
  run_settings.check(path, {"a": 1, "b.c": (1, 2), "d.e": "x"}, True, "the results",
                     optional=("d",))
  with open(path) as f:
    assert json.load(f) == {"a": 1, "b.c": [1, 2]}   # the results' record is kept
  with pytest.raises(run_settings.SettingsMismatchError, match=r"d.e: \(not set\) there"):
    run_settings.check(path, {"a": 1, "b.c": [1, 2], "d.e": "x"}, True, "the results")
  with pytest.raises(run_settings.SettingsMismatchError, match=r"b.c: \[1, 2\] there, "
                     r"\(not set\) now"):   # a required field gone
    run_settings.check(path, {"a": 1}, True, "the results", optional=("d",))
  # Once checked otherwise, the missing fields are recorded, and compared from then on.
  run_settings.add_missing(path, {"a": 2, "b.c": [1, 2], "d.e": "x"})
  with open(path) as f:
    assert json.load(f) == {"a": 1, "b.c": [1, 2], "d.e": "x"}
  with pytest.raises(run_settings.SettingsMismatchError, match="d.e: 'x' there, 'y' now"):
    run_settings.check(path, {"a": 1, "b.c": [1, 2], "d.e": "y"}, True, "the results",
                       optional=("d",))   # both have it: compared


def test_weights_fingerprint_tells_what_a_folder_holds(tmp_path):
  assert weights.fingerprint("random") == "random"
  assert weights.fingerprint(str(tmp_path / "absent")) is None   # a finished stage's
  converted = str(tmp_path / "converted")
  tree = {"w": np.zeros(3, np.float32)}
  checkpoints.save(converted, tree, {"kind": "t", "source": "/a/g.pt", "source_sha256": "ab"})
  assert weights.fingerprint(converted) == "source_sha256 ab"   # not the source's path
  bare = str(tmp_path / "bare")
  checkpoints.save(bare, tree, {"kind": "t"})
  assert weights.fingerprint(bare).startswith("metadata.json sha256 ")
  # An FR model's files of a package registry (tools/fetch_assets.py), in a folder shared
  # with another model's: only its own files count.
  fetched, files = tmp_path / "fetched", ("model.json", "model.bin")
  fetched.mkdir()
  assert weights.fingerprint(str(fetched), files) is None   # an empty leftover folder
  (fetched / "model.json").write_text("{}")
  (fetched / "model.bin").write_bytes(b"\x00\x01")
  first = weights.fingerprint(str(fetched), files)
  (fetched / "other.bin").write_bytes(b"\x03")   # another model's, a .DS_Store, a .tmp
  assert weights.fingerprint(str(fetched), files) == first
  (fetched / "model.bin").write_bytes(b"\x00\x02")
  assert weights.fingerprint(str(fetched), files) != first
  assert weights.fingerprint(str(fetched)) is None   # neither its files nor converted
  assert weights.fingerprints({"g": converted, "e": str(tmp_path / "absent"),
                               "f": str(fetched)}, {"f": files}) == {
      "fingerprints.g": "source_sha256 ab",
      "fingerprints.f": weights.fingerprint(str(fetched), files)}


def test_generate_refuses_other_weights_converted_into_the_same_folder(tmp_path):
  """The settings record names the weights folder; its fingerprint tells a folder converted
  again from another checkpoint (a different generator under the same path)."""
  folder = str(tmp_path / "g")
  model = weights.generator_from_config(tiny_generate_config().generator)

  def convert(seed):
    params, noise = convert_generator(tiny_torch_state_dict(seed=seed), **TINY)
    checkpoints.save(folder, {"params": params, "noise": noise},
                     {"kind": "stylegan2", "architecture": weights.stylegan2_arch(model),
                      "has_latent_avg": False, "source_sha256": f"sha-of-seed-{seed}"})

  convert(1)
  config, work = tiny_generate_config(folder), str(tmp_path / "work")
  config.num_images = 1
  generate.run(config, work)
  record = os.path.join(work, "settings.json")
  with open(record) as f:
    full = json.load(f)
  assert full["fingerprints.generator"] == "source_sha256 sha-of-seed-1"
  # A record of an older version, without fingerprints, is accepted and gains them.
  del full["fingerprints.generator"]
  with open(record, "w") as f:
    json.dump(full, f)
  generate.run(config, work)
  with open(record) as f:
    assert json.load(f)["fingerprints.generator"] == "source_sha256 sha-of-seed-1"
  shutil.rmtree(folder)
  convert(2)
  with pytest.raises(run_settings.SettingsMismatchError,
                     match="fingerprints.generator: 'source_sha256 sha-of-seed-1' there, "
                           "'source_sha256 sha-of-seed-2' now"):
    generate.run(config, work)


def test_sample_fn_matches_manual_pipeline():
  config = tiny_generate_config()
  gen = weights.load_generator(config.generator, jax.random.key(0))
  model = gen.model
  z = jax.random.normal(jax.random.key(1), (2, 32))
  w_avg = jnp.zeros(32)
  images = generate.make_sample_fn(model)(gen.params, z, gen.noise, w_avg, 0.5)
  w = model.apply({"params": gen.params}, z, method=model.get_latent)
  manual = model.apply({"params": gen.params},
                       stylegan2.broadcast_to_wplus(0.5 * w, 16), gen.noise)
  np.testing.assert_allclose(images, manual, rtol=1e-5, atol=1e-5)


def test_convert_tool_face_kind(tmp_path):
  """The face kind goes through the same tool: .pth -> strict converter -> orbax."""
  torch = pytest.importorskip("torch")
  from clip2protect_jax.convert.face import convert_face, expected_torch_shapes
  rng = np.random.default_rng(0)
  sd = {k: (np.zeros(s, np.int64) if k.endswith("num_batches_tracked") else
            rng.standard_normal(s).astype(np.float32))
        for k, s in expected_torch_shapes("mobile_face").items()}
  pth = tmp_path / "mobile_face.pth"
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, pth)
  out = tmp_path / "mobile_face"
  proc = subprocess.run(
      [sys.executable, "tools/convert_checkpoint.py", "--kind=face", "--name=mobile_face",
       f"--input={pth}", f"--output={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert checkpoints.load_metadata(str(out))["name"] == "mobile_face"
  want = {"params": convert_face("mobile_face", sd)}
  got = checkpoints.restore(str(out), jax.eval_shape(lambda: want))
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)

  sd.pop(next(iter(sd)))  # a broken file fails naming the key, and writes nothing
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, pth)
  proc = subprocess.run(
      [sys.executable, "tools/convert_checkpoint.py", "--kind=face", "--name=mobile_face",
       f"--input={pth}", f"--output={tmp_path / 'broken'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "missing (1)" in proc.stderr
  assert f"--input {pth} does not fit --kind=face" in proc.stderr
  assert not (tmp_path / "broken").exists()


def test_parity_tool_rejects_unsupported_items():
  proc = subprocess.run(
      [sys.executable, "tools/parity.py", "--golden=tests/golden", "--only=stylegan2,nope"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert "nope" in proc.stderr and "stylegan2" in proc.stderr
