"""clip2protect_jax: a JAX/Flax reimplementation of CLIP2Protect (CVPR 2023)."""
