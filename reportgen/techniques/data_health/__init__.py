"""Data health: the images a reviewer must look at — suspected label errors, near-duplicates, outliers — and a
map of the whole set, from per-image embeddings kept by the one streaming pass (issue 29).

The package: `embedding` (the seeded projection and `EmbeddingStore`, the accumulator), `label_issues` (confident
learning), `duplicates` (exact in blocks, LSH beyond), `outliers` (distance to class centres) and `atlas` (PCA
layout and atlas grid). Pure numpy; their public names are handed on here.
"""

from reportgen.techniques.data_health.atlas import ATLAS_GRID, AtlasCell, AtlasGrid, Layout, atlas_grid, pca_layout
from reportgen.techniques.data_health.duplicates import (
    DUPLICATE_THRESHOLD,
    EXACT_LIMIT,
    DuplicatePair,
    Duplicates,
    find_duplicates,
    lsh_recall,
)
from reportgen.techniques.data_health.embedding import (
    DENSE_CLASS_LIMIT,
    LAYOUT_GRID,
    MAX_DIMENSIONS,
    TOP_CLASSES,
    Embeddings,
    EmbeddingStore,
    RandomProjection,
    SetEmbedding,
    embedding_parts,
)
from reportgen.techniques.data_health.label_issues import (
    LabelIssue,
    LabelIssues,
    find_label_issues,
    find_label_issues_in,
)
from reportgen.techniques.data_health.outliers import Outlier, Outliers, energy_scores, find_outliers

__all__ = [
    "ATLAS_GRID", "DENSE_CLASS_LIMIT", "LAYOUT_GRID", "DUPLICATE_THRESHOLD", "EXACT_LIMIT", "MAX_DIMENSIONS",
    "TOP_CLASSES",
    "AtlasCell", "AtlasGrid", "DuplicatePair", "Duplicates", "EmbeddingStore", "Embeddings", "LabelIssue",
    "LabelIssues", "Layout", "Outlier", "Outliers", "RandomProjection", "SetEmbedding",
    "embedding_parts", "atlas_grid", "energy_scores",
    "find_duplicates", "find_label_issues", "find_label_issues_in", "find_outliers", "lsh_recall", "pca_layout",
]
