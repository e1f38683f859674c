"""Face-recognition models and their registry: the paper's surrogates (IR-152, IR-SE-50,
MobileFaceNet, FaceNet; torch checkpoints) and the real models installable from npm
(dlib's ResNet, HSE MobileNet `faceres`, MobileFace; TF.js weights).

See registry.py for names, input conventions, thresholds and the `embed` API.
"""
from clip2protect_jax.models.face.dlib_resnet import DlibResNet
from clip2protect_jax.models.face.facenet import InceptionResnetV1
from clip2protect_jax.models.face.human import FaceRes, MobileFace
from clip2protect_jax.models.face.ir152 import IR152
from clip2protect_jax.models.face.irse import IRSE50, Backbone, MobileFaceNet
from clip2protect_jax.models.face.registry import (FRModel, cosine_matrix, cosine_similarity,
                                                   embed, get, model_input, names, preprocess,
                                                   register)

__all__ = ["Backbone", "DlibResNet", "FRModel", "FaceRes", "IR152", "IRSE50",
           "InceptionResnetV1", "MobileFace", "MobileFaceNet", "cosine_matrix",
           "cosine_similarity", "embed", "get", "model_input", "names", "preprocess",
           "register"]
