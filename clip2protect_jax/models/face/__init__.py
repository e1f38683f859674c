"""Face-recognition surrogates (IR-152, IR-SE-50, MobileFaceNet, FaceNet) and their registry.

See registry.py for names, input conventions, thresholds and the `embed` API.
"""
from clip2protect_jax.models.face.facenet import InceptionResnetV1
from clip2protect_jax.models.face.ir152 import IR152
from clip2protect_jax.models.face.irse import IRSE50, Backbone, MobileFaceNet
from clip2protect_jax.models.face.registry import (FRModel, cosine_matrix, cosine_similarity,
                                                   embed, get, names, preprocess, register)

__all__ = ["Backbone", "FRModel", "IR152", "IRSE50", "InceptionResnetV1", "MobileFaceNet",
           "cosine_matrix", "cosine_similarity", "embed", "get", "names", "preprocess",
           "register"]
