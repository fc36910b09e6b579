"""The one place privsplit finds and loads dlib's face models (optional ``attacks`` extra).

Used by the reconstruction attack's identity check (:mod:`privsplit.attacks.face_match`), by the
distillation teacher (:mod:`privsplit.backbone.teachers`) and, being free of training/attack code,
by the device when it needs a detector/aligner.

The model files come from the ``face_recognition_models`` package, found *without importing it* (its
``__init__`` needs ``pkg_resources``, which recent setuptools no longer ship). Everything is loaded
lazily and once per process (dlib models are read-only after loading, so sharing them is safe).

About the recognizer's training data (matters when LFW people are the attack targets): dlib's model
card (github.com/davisking/dlib-models, README, ``dlib_face_recognition_resnet_model_v1``) says it
was "trained from scratch on a dataset of about 3 million faces" derived from the face scrub dataset,
the VGG dataset and "a large number of images I scraped from the internet", with 7485 identities, and
"I made sure to avoid overlap with identities in LFW"; it reports 99.38% on the LFW benchmark. So
the 62 LFW target people are, per its author, not among its training identities (a claim we cannot
check).
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

from privsplit.errors import MissingDependency

__all__ = ["LANDMARKS_5", "RECOGNIZER", "dlib_model_dir", "dlib_available", "require_dlib", "face_detector",
           "shape_predictor", "face_recognizer", "DLIB_TRAINING_DATA",
           "LANDMARKS_FILE", "RECOGNIZER_FILE"]

LANDMARKS_5 = "shape_predictor_5_face_landmarks.dat"
RECOGNIZER = "dlib_face_recognition_resnet_model_v1.dat"

#: what dlib's documentation says about the recognizer's training data (quoted in docs and outputs)
DLIB_TRAINING_DATA = ("dlib's recognizer was trained on ~3M faces of 7,485 people (face scrub, VGG dataset, web "
                      "scrapes); its model card says: 'I made sure to avoid overlap with identities in LFW'")
LANDMARKS_FILE, RECOGNIZER_FILE = LANDMARKS_5, RECOGNIZER  # the names main used first


def dlib_model_dir() -> Path | None:
    """Folder with dlib's model files from the ``face_recognition_models`` package, or ``None``."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        folder = Path(loc) / "models"
        if (folder / LANDMARKS_5).exists() and (folder / RECOGNIZER).exists():
            return folder
    return None


def dlib_available() -> bool:
    """True when ``dlib`` imports and the ``face_recognition_models`` files are present."""
    if importlib.util.find_spec("dlib") is None or dlib_model_dir() is None:
        return False
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return True


def require_dlib() -> tuple[Any, Path]:
    """``(dlib module, model folder)``; raises ImportError naming the ``attacks`` extra when missing."""
    folder = dlib_model_dir()
    if folder is None or not dlib_available():
        raise MissingDependency("dlib and its model files are needed here", extra="attacks",
                                packages=("dlib-bin", "face_recognition_models"))
    import dlib

    return dlib, folder


@lru_cache(maxsize=1)
def face_detector() -> Any:
    """dlib's HOG frontal face detector."""
    return require_dlib()[0].get_frontal_face_detector()


@lru_cache(maxsize=1)
def shape_predictor() -> Any:
    """dlib's 5-point landmark predictor (eyes' corners and nose), what the recognizer aligns with."""
    dlib, folder = require_dlib()
    return dlib.shape_predictor(str(folder / LANDMARKS_5))


@lru_cache(maxsize=1)
def face_recognizer() -> Any:
    """dlib's ResNet face recognizer (128-d descriptors, Euclidean threshold 0.6)."""
    dlib, folder = require_dlib()
    return dlib.face_recognition_model_v1(str(folder / RECOGNIZER))
