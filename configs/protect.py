"""Protect faces end to end (job `protect`), corrected defaults; the product's main command.

align -> invert (W+) -> pivotal tuning -> adversarial latent search -> evaluate -> report,
every stage resumable in --workdir.

Embedded default (README's first command; real example photos and real npm FR models
(faceres + mobileface attack, dlib_resnet + dlib C++ judge) from tools/fetch_assets.py,
RANDOM generator/CLIP weights unless converted checkpoints exist in checkpoints/):
  python -m clip2protect_jax.main --config=configs/protect.py:demo --workdir=workdir/demo
Paper settings (1024, e4e, CLIP ViT-B/32, 4 FR nets; needs the converted checkpoints and the
target photos, see checkpoints/README.md):
  python -m clip2protect_jax.main --config=configs/protect.py --workdir=workdir/run \
      --config.photos=PATH/TO/PHOTOS --config.prompt="purple eyeshadow"
CPU smoke run (tiny random networks, about a minute):
  python -m clip2protect_jax.main --config=configs/protect.py:tiny --workdir=/tmp/tiny
Override anything: --config.protect.mode=dodging --config.fr.surrogates=irse50,facenet
--config.fr.victims=ir152 --config.protect.trainable_rows=8,9,10 --config.tune.steps=100 ...
The official code's behaviour (every quirk of REFERENCE.md section 8): configs/official.py.

Expected result in --workdir: protect/faces/*.png (protected, generator resolution),
protect/photos/*.png (pasted back), protect/results/*.json (per face), protect/metrics.json,
protect/report.html.
"""
from clip2protect_jax import presets


def get_config(arg: str = ""):
  """arg: "" (paper settings) | "demo" (embedded default) | "tiny" (CPU smoke)."""
  return presets.protect_config(arg, official=False)
