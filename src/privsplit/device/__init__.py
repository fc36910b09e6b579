"""The device side's image path: face detection, 5-point alignment, the LFW framing (:mod:`.faces`).

Light on purpose (numpy, PIL, the registry; dlib lazily): the device client imports it, and it imports no
training, attack, audit, report, CLI or server code.
"""
from privsplit.device.faces import (
    DETECTORS, LFW_LANDMARKS, Face, FaceDetector, HogDetector, NoFaceError, StubDetector, align_crop, detect,
    get_detector, pixel_key, set_detector, template,
)

__all__ = ["DETECTORS", "LFW_LANDMARKS", "Face", "FaceDetector", "HogDetector", "NoFaceError", "StubDetector",
           "align_crop", "detect", "get_detector", "pixel_key", "set_detector", "template"]
