"""The official CLIP2Protect code's behaviour, quirks included (for reproducing the paper).

Same job and fields as configs/protect.py, with every switch of REFERENCE.md section 8 on
(presets.OFFICIAL_QUIRKS): cumulative pivotal tuning (one generator carried from image to
image), CLIP's (v+1)/2 shift, the output taken at step index 49, dodging that keeps the
target term. Quirk 5 (FR losses summed over models) is the only formula either way, and
quirk 6 (re-encoding text and running the victim each step) changes no result and is not
reproduced. Not a quirk, a precision: the official code runs CLIP in float16 on a GPU;
here CLIP runs in float32 unless --config.clip.dtype=float16 (LayerNorm and softmax stay
float32, as in OpenAI's fp16 model).
  python -m clip2protect_jax.main --config=configs/official.py --workdir=workdir/paper \
      --config.photos=CelebA-HQ-1000/ --config.align.enabled=False \
      --config.method=latents --config.latents_file=latents.pt
CPU smoke run: --config=configs/official.py:tiny
"""
from clip2protect_jax import presets


def get_config(arg: str = ""):
  """arg: "" (paper settings) | "demo" | "tiny"."""
  return presets.protect_config(arg, official=True)
