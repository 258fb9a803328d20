"""The one place where paths and knobs are defined: `Settings` and its typed per-stage groups.

Every value can be overridden from the environment with the ``IMAGESEARCH_`` prefix; nested
groups use ``__`` (``IMAGESEARCH_CATALOG__WORKERS=4``). Lists take JSON
(``IMAGESEARCH_SOURCES='[{"name": "mine", "path": "/photos"}]'``).
"""

from imagesearch.settings.judging import AblationSettings, DriftSettings, EvaluationSettings
from imagesearch.settings.online import ExperimentSettings, UpSettings
from imagesearch.settings.serving import ServiceSettings
from imagesearch.settings.stages import (
    TRAINING_SOURCES,
    CatalogSettings,
    ClusterSettings,
    EmbeddingSettings,
    IndexSettings,
    ModelSettings,
    SourceSettings,
    TrainingDataSettings,
    TrainingSettings,
)
from imagesearch.settings.workspace import DEFAULT_CORPUS_NAME, PROJECT_ROOT, Settings

__all__ = [
    "DEFAULT_CORPUS_NAME",
    "PROJECT_ROOT",
    "TRAINING_SOURCES",
    "AblationSettings",
    "CatalogSettings",
    "ClusterSettings",
    "DriftSettings",
    "EmbeddingSettings",
    "EvaluationSettings",
    "ExperimentSettings",
    "IndexSettings",
    "ModelSettings",
    "ServiceSettings",
    "Settings",
    "SourceSettings",
    "TrainingDataSettings",
    "TrainingSettings",
    "UpSettings",
]
