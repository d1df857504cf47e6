"""The grocery-store photos as a catalogue with families, for the family evaluation.

Klasson et al.'s grocery-store dataset (../shared/datasets/grocery-store, MIT): photos
listed in dataset/train.txt and dataset/val.txt as `path, fine_class_id, coarse_class_id`;
dataset/classes.csv names the classes. The family of a photo is its coarse class name
(Juice, Milk, Yoghurt, Apple, ...); its fine class (a brand or variety) is what the
"held out by fine class" variant of the evaluation keeps together.

Feature vectors take minutes on two cores, so `embed_cached` keeps them in an .npz file
(bench/out/, gitignored) keyed by the model id and the list of photos.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Photos:
    """The photos of one or more splits and their labels (parallel arrays)."""

    paths: list[Path]
    split: np.ndarray  # str: "train" | "val"
    fine: np.ndarray  # str: fine class name (one brand or variety)
    family: np.ndarray  # str: coarse class name

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, idx: np.ndarray) -> Photos:
        """The photos `idx` (indices or boolean mask)."""
        idx = np.asarray(idx)
        chosen = np.flatnonzero(idx) if idx.dtype == bool else idx
        return Photos([self.paths[i] for i in chosen], self.split[idx], self.fine[idx],
                      self.family[idx])


def load_photos(root: Path, splits: tuple[str, ...] = ("train", "val")) -> Photos:
    """Photos of `splits` under `root` (the folder holding dataset/), in list order."""
    data = root / "dataset"
    if not (data / "classes.csv").is_file():
        raise FileNotFoundError(f"grocery-store dataset not found under {root}")
    fine_name: dict[int, str] = {}
    coarse_name: dict[int, str] = {}
    with (data / "classes.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            fine_name[int(row["Class ID (int)"])] = row["Class Name (str)"]
            coarse_name[int(row["Coarse Class ID (int)"])] = row["Coarse Class Name (str)"]
    paths, split, fine, family = [], [], [], []
    for name in splits:
        for line in (data / f"{name}.txt").read_text().splitlines():
            if not line.strip():
                continue
            rel, fine_id, coarse_id = (p.strip() for p in line.split(","))
            paths.append(data / rel)
            split.append(name)
            fine.append(fine_name[int(fine_id)])
            family.append(coarse_name[int(coarse_id)])
    return Photos(paths, np.array(split), np.array(fine), np.array(family))


def embed_cached(photos: Photos, spec: str, model_cache: Path, cache_file: Path,
                 chunk: int = 64) -> tuple[np.ndarray, str]:
    """(float16 (n, d) unit feature vectors, model id) of the photos, cached in `cache_file`.

    Vectors go through float16 as the signature stage stores them. The cache is reused
    when it holds the same model id and the same photo list (digest of the paths).
    """
    from npimage.fv.models import load
    from npimage.ingest.decode import decode

    extractor = load(spec, model_cache)
    # the photo list, relative to the dataset folder (the same data mounted elsewhere hits)
    names = (str(p).rsplit("/dataset/", 1)[-1] for p in photos.paths)
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    if cache_file.exists():
        cached = np.load(cache_file)
        if str(cached["model_id"]) == extractor.model_id and str(cached["digest"]) == digest:
            return cached["fv"], extractor.model_id
    parts = []
    for start in range(0, len(photos), chunk):
        images = [decode(p.read_bytes(), 250_000_000).rgb
                  for p in photos.paths[start:start + chunk]]
        parts.append(extractor.embed(images).astype(np.float16))
    fv = np.concatenate(parts) if parts else np.zeros((0, extractor.dim), np.float16)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".tmp.npz")
    np.savez(tmp, fv=fv, model_id=extractor.model_id, digest=digest)
    tmp.replace(cache_file)
    return fv, extractor.model_id
