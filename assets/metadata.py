"""Metadata shared by the assets."""

import dagster as dg

from imagesearch.common.versioning import StageVersion


def version_metadata(version: StageVersion | None) -> dict:
    """The DVC hashes and workspace commit of a recorded step (nothing when it was not recorded)."""
    if version is None:
        return {}
    return {"dvc_md5": dg.MetadataValue.json(version.outputs), "dvc_commit": version.commit}
