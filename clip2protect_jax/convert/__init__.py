"""Converters: torch state_dicts (plain dicts of numpy arrays) -> Flax param trees.

The core needs no torch: a converter takes `{torch_name: np.ndarray}` exactly as
`{k: v.numpy() for k, v in state_dict.items()}` gives it, checks it strictly against
the names and shapes the architecture expects, and returns a Flax param tree.
"""
