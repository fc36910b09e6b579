"""The one dlib loader of the package: face detector, 5-point landmarks and the 128-d recognizer.

dlib (``dlib-bin``) and its model files (``face_recognition_models``) are an optional extra
(``pip install 'privsplit[attacks]'``). They are used on the device (face detection + alignment), by the
attacks (an independent face recognizer) and as a distillation teacher, so the loader lives here, in a
module the device client may import: it imports nothing of privsplit and loads dlib lazily.

The model files are found in the ``face_recognition_models`` package *without importing it* (its
``__init__`` needs ``pkg_resources``, which recent setuptools no longer ship). Loaded models are cached
per process (loading the recognizer takes ~0.3 s).
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

from privsplit.errors import MissingDependency

__all__ = ["LANDMARKS_FILE", "RECOGNIZER_FILE", "dlib_model_dir", "dlib_available", "require_dlib",
           "face_detector", "shape_predictor", "face_recognizer"]

LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
RECOGNIZER_FILE = "dlib_face_recognition_resnet_model_v1.dat"


def dlib_model_dir() -> Path | None:
    """Folder with dlib's model files from the ``face_recognition_models`` package, or ``None``."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        folder = Path(loc) / "models"
        if (folder / LANDMARKS_FILE).exists() and (folder / RECOGNIZER_FILE).exists():
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
    """The ``dlib`` module and the model folder; ``ImportError`` naming the extra when either is missing."""
    folder = dlib_model_dir()
    if folder is None or importlib.util.find_spec("dlib") is None:
        raise MissingDependency("dlib and its model files are needed here", extra="attacks",
                                packages=("dlib-bin", "face_recognition_models"))
    import dlib

    return dlib, folder


@functools.lru_cache(maxsize=1)
def face_detector() -> Any:
    """dlib's HOG frontal face detector (needs faces of ~80 px and up)."""
    dlib, _ = require_dlib()
    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=1)
def shape_predictor() -> Any:
    """dlib's 5-point landmark model (eye corners and the base of the nose)."""
    dlib, folder = require_dlib()
    return dlib.shape_predictor(str(folder / LANDMARKS_FILE))


@functools.lru_cache(maxsize=1)
def face_recognizer() -> Any:
    """dlib's ResNet face recognizer (128-d descriptors, Euclidean threshold 0.6)."""
    dlib, folder = require_dlib()
    return dlib.face_recognition_model_v1(str(folder / RECOGNIZER_FILE))
