"""Parity of the Flax ports with the golden vectors of the official PyTorch code.

  python tools/parity.py --golden ../shared/golden [--only stylegan2[,NAME...]] [--float64]

For every supported golden item present in --golden (or those named by --only): rebuild
the recipe-v1 weights from manifest.json, convert them with the project's converter, run
the project's model on the stored inputs and print one line per compared output with
max-abs, scaled (max-abs / max|golden|) and relative-L2 error, and ok/FAIL against the
tolerances of golden/README.md. --float64 compares against the `*_f64` references with
jax_enable_x64. Exits 1 if any output fails, 2 if an --only item is unsupported or missing.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("golden", None, "Folder with manifest.json and the golden .npz files.",
                    required=True)
flags.DEFINE_list("only", None, "Comma-separated golden items to check (default: all "
                  "supported items present in --golden).")
flags.DEFINE_bool("float64", False, "Compare in float64 against the *_f64 references.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax
  jax.config.update("jax_default_matmul_precision", "highest")
  if FLAGS.float64:
    jax.config.update("jax_enable_x64", True)
  from clip2protect_jax import parity
  from clip2protect_jax.parity import recipe

  manifest = recipe.load_manifest(FLAGS.golden)
  available = parity.available_items(FLAGS.golden)
  names = FLAGS.only or available
  bad = [n for n in names if n not in available]
  if bad:
    print(f"not supported or golden files missing in {FLAGS.golden}: {', '.join(bad)} "
          f"(supported and present: {', '.join(available) or 'none'})", file=sys.stderr)
    return 2
  if not names:
    print(f"no supported golden item found in {FLAGS.golden}", file=sys.stderr)
    return 2
  failures = total = 0
  for name in names:
    for c in parity.run_item(name, FLAGS.golden, manifest, float64=FLAGS.float64):
      print(c.line(), flush=True)
      total += 1
      failures += not c.ok
  print(f"{total - failures} passed, {failures} failed")
  return 1 if failures else 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
