"""Image->image nDCG@10 of the raw pretrained features under training-free transforms, on every held-out
set of the workspace: the in-domain test split and each out-of-domain collection's val and test rows
(what chose the `sqrt_centered` raw block, and whether the test rows agree).

The features come from the backbone cache (a finished `make demo` has filled it for the catalog and
the test rows; the val rows take a backbone pass). Statistics that need fitting (the centring mean,
PCA) are fitted on the catalog's train split only.

    .venv/bin/python benchmarks/eval_raw_transforms.py
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from imagesearch.catalog.build import read_catalog
from imagesearch.embeddings.backbone_cache import cache_folder, file_features
from imagesearch.evaluation.ranking import rank_corpus, score_rankings
from imagesearch.evaluation.sets import IMAGE_TO_IMAGE, EvalSets, outside_split
from imagesearch.evaluation.step import read_outside_sets
from imagesearch.models.builders import build_trained_encoder
from imagesearch.settings import Settings


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True).clip(min=1e-12)


def rooted(rows: np.ndarray) -> np.ndarray:
    return unit(np.sqrt(np.clip(rows, 0, None)))


def pca_whitening(fit: np.ndarray, dims: int, power: float):
    """Project on the top `dims` components of `fit`, each divided by its std ** `power`."""
    mean = fit.mean(axis=0)
    _, singular, components = np.linalg.svd(fit - mean, full_matrices=False)
    scale = (singular[:dims] ** 2 / len(fit)) ** (power / 2)
    return lambda rows: (rows - mean) @ components[:dims].T / scale


def transforms(train: np.ndarray) -> dict:
    center, root_center = unit(train).mean(axis=0), rooted(train).mean(axis=0)
    whiten = pca_whitening(unit(train), 512, 1.0)
    shrunk = pca_whitening(rooted(train), 512, 0.5)
    return {
        "plain": unit,
        "sqrt": rooted,
        "centered": lambda rows: unit(rows) - center,
        "sqrt_centered": lambda rows: rooted(rows) - root_center,
        "PCA-whitened 512": lambda rows: whiten(unit(rows)),
        "sqrt, PCA 512, std^0.5": lambda rows: shrunk(rooted(rows)),
    }


def main() -> None:
    settings = Settings()
    plain = build_trained_encoder(
        settings.model.model_copy(update={"head": "two_tower", "raw_feature_weight": 0})
    )
    folder = cache_folder(settings)
    catalog = read_catalog(settings.catalog_path)
    train = file_features(plain, catalog.loc[catalog["split"] == "train", "path"].tolist(), folder)
    sets = {"in-domain test": EvalSets.read(settings.evaluation_dir)}
    validation = outside_split(settings, "val")
    for name, collection in read_outside_sets(settings).items():
        sets[f"{name} val"] = validation[name]
        sets[f"{name} test"] = collection
    rows = []
    for label, make in transforms(train).items():
        row = {"raw block": label}
        for name, collection in sets.items():
            vectors = unit(make(file_features(plain, collection.corpus["path"].tolist(), folder)))
            scores = score_rankings(collection, rank_corpus(collection, vectors.astype(np.float32), None))
            row[name] = scores[IMAGE_TO_IMAGE]["ndcg_at_10"]
        rows.append(row)
    print(f"fitted on {len(train)} train-split catalog images")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f"))


if __name__ == "__main__":
    main()
