"""Face datasets: manifests, loaders, decoding with cache, identity-disjoint splits, synthetic faces."""
from __future__ import annotations

from privsplit.data.errors import DataError
from privsplit.data.faces import FaceData, FaceDataset, load_faces
from privsplit.data.images import DecodedImages, decode_manifest
from privsplit.data.loaders import (
    LOADERS, build_lfw_labels, celeba, ckplus, csv_manifest, default_dataset, download_lfw, lfw,
    load_manifest, register_loader, synthetic,
)
from privsplit.data.manifest import Manifest
from privsplit.data.splits import Splits, identity_disjoint_split, per_identity_split
from privsplit.data.transforms import Preprocess, augment, decode_image, normalize

__all__ = [
    "DataError", "FaceData", "FaceDataset", "load_faces", "DecodedImages", "decode_manifest", "LOADERS",
    "register_loader",
    "build_lfw_labels", "celeba", "ckplus", "csv_manifest", "default_dataset", "download_lfw", "lfw",
    "load_manifest", "synthetic", "Manifest", "Splits", "identity_disjoint_split", "per_identity_split", "Preprocess", "augment",
    "decode_image", "normalize",
]
