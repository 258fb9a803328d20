"""MLflow: the only package that talks to the tracking store and the model registry.

`store` connects to the workspace's sqlite store and logs runs, `versions` registers and loads
encoders and resolves aliases, `promotions` records the promotion rule's decisions and rollbacks.
Callers use this package's names (`from imagesearch.models import registry`; `registry.load_encoder`).
"""

from imagesearch.models.registry.promotions import (
    PromotionRecord,
    promotion_record,
    record_promotion,
    roll_back,
    rollback_reason,
)
from imagesearch.models.registry.store import (
    EXPERIMENT,
    RegistryError,
    connect,
    log_artifacts,
    log_evaluation,
    log_nested_run,
    log_step_metrics,
    tracked_run,
)
from imagesearch.models.registry.versions import (
    CHALLENGER,
    CHAMPION,
    ONNX_TAG,
    V0,
    EncoderPyfunc,
    RegisteredEncoder,
    alias_version,
    encoder_folder,
    load_encoder,
    log_encoder,
    pin_reference,
    pinned_alias,
    register_encoder,
    register_v0,
    signature,
    version_of_run,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "EXPERIMENT",
    "ONNX_TAG",
    "V0",
    "EncoderPyfunc",
    "PromotionRecord",
    "RegisteredEncoder",
    "RegistryError",
    "alias_version",
    "connect",
    "encoder_folder",
    "load_encoder",
    "log_artifacts",
    "log_encoder",
    "log_evaluation",
    "log_nested_run",
    "log_step_metrics",
    "pin_reference",
    "pinned_alias",
    "promotion_record",
    "record_promotion",
    "register_encoder",
    "register_v0",
    "roll_back",
    "rollback_reason",
    "signature",
    "tracked_run",
    "version_of_run",
]
