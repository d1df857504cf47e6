"""Feature vectors (FV): a CNN embedding per image, compared by cosine similarity.

The signature stage talks to a model only through `FeatureExtractor`; `load_extractor`
turns a setting (a TF Hub handle or URL, a local SavedModel folder, or the offline
default "efficientnet-lite0") into one. TensorFlow is imported lazily, inside the
loader, so that importing npimage (and parsing DAG files) stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # numba stays out of a plain `import npimage.fv`
    from npimage.ingest.resample import Pixels


class FeatureExtractor(Protocol):
    """Turns decoded RGB images into L2-normalised float32 vectors of a fixed size."""

    #: Stable identity of the model, stored in signatures.fv_model.
    model_id: str
    #: Vector length.
    dim: int

    def embed(self, images: Sequence[Image.Image | Pixels]) -> np.ndarray:
        """Return an array of shape (len(images), dim), float32, rows of unit length
        (pictures as Pillow images, or the RGB `Pixels` of one)."""
        ...


def load_extractor(spec: str, cache_dir: Path, engine: str | None = None) -> FeatureExtractor:
    """Load the model named by `spec` (see module docstring) for inference, once per process.

    `engine`: one of npimage.fv.tflite.ENGINES ("tf" = "tf-fp32"); default the setting
    NPIMAGE_FV_ENGINE, else "auto" (npimage.fv.tflite).
    """
    from npimage.fv.models import load

    return load(spec, cache_dir, engine=engine)
