"""Forward+backward time of the face-recognition surrogates on the current device.

  python tools/benchmark_face.py [--models irse50,ir152,mobile_face,facenet] [--batch 8]
      [--iters 5] [--matmul_precision highest]

Per model: the jitted gradient w.r.t. the input images of sum_i (1 - cos(f(x_i), t_i)) (the
adversarial loss of stage 2) at the model's input size, with random weights (speed does
not depend on their values). Prints the compile time and the median of --iters timed runs.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_list("models", ["irse50", "ir152", "mobile_face", "facenet", "dlib_resnet",
                                "faceres", "mobileface"], "Registry names.")
flags.DEFINE_integer("batch", 8, "Images per step.")
flags.DEFINE_integer("iters", 5, "Timed runs after the compiling one.")
flags.DEFINE_enum("matmul_precision", "highest", ["default", "high", "highest"],
                  "jax_default_matmul_precision (fp32 parity needs 'highest' on GPU).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  jax.config.update("jax_default_matmul_precision", FLAGS.matmul_precision)
  from clip2protect_jax.models.face import registry

  dev = jax.devices()[0]
  print(f"device: {dev.platform} {dev.device_kind}, batch {FLAGS.batch}, "
        f"matmul precision {FLAGS.matmul_precision}, jax {jax.__version__}")
  print(f"{'model':<12} {'input':>8} {'compile s':>10} {'fwd+bwd ms':>11} {'ms/image':>9} "
        f"{'images/s':>9}")
  for name in FLAGS.models:
    spec = registry.get(name)
    key_x, key_t, key_p = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.uniform(key_x, (FLAGS.batch, *spec.input_size, 3), jnp.float32, -1, 1)
    targets = jax.random.normal(key_t, (FLAGS.batch, spec.embedding_size))
    params = jax.jit(spec.module().init)(key_p, x[:1])["params"]

    def loss(images, p):
      emb = registry.embed(name, p, images)
      return jnp.sum(1.0 - registry.cosine_similarity(emb, targets))

    step = jax.jit(jax.grad(loss))
    t0 = time.perf_counter()
    compiled = step.lower(x, params).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(x, params))  # warm-up
    times = []
    for _ in range(FLAGS.iters):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(x, params))
      times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(times)
    size = "x".join(map(str, spec.input_size))
    print(f"{name:<12} {size:>8} {compile_s:>10.1f} {ms:>11.1f} {ms / FLAGS.batch:>9.1f} "
          f"{1e3 * FLAGS.batch / ms:>9.1f}", flush=True)
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
