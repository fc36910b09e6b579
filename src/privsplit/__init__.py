"""privsplit: privacy-preserving hybrid (split) deep inference, after Osia et al. 2017.

The device runs the first layers of a CNN (the *feature extractor*), the cloud runs the rest (the
*analyzer*); the paper's embeddings make the features that cross the network useful for the primary
task (gender, emotion) and poor for identity.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
