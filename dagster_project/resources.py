"""Resources shared by the assets."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from dagster_ray import Lifecycle, LocalRay, RayResource

from imagesearch.settings import Settings, SourceSettings


class WorkspaceResource(dg.ConfigurableResource):
    """The imagesearch workspace the assets read and write; unset fields fall back to Settings()."""

    home: str | None = None
    image_dirs: list[str] | None = None

    def settings(self) -> Settings:
        overrides: dict = {}
        if self.home:
            overrides["home"] = Path(self.home)
        if self.image_dirs is not None:
            overrides["sources"] = [
                SourceSettings(name=Path(folder).name or "images", path=Path(folder))
                for folder in self.image_dirs
            ]
        return Settings(**overrides)


def ray_cluster_resource(settings: Settings) -> LocalRay:
    """dagster-ray's resource for the heavy assets. Connected only when `cluster.engine` is 'ray': then
    `ray.init` joins RAY_ADDRESS (a `ray://` cluster) or starts a local one. On Kubernetes, swap in
    dagster-ray's `KubeRayCluster` / `KubeRayInteractiveJob` under the same key (see the README)."""
    return LocalRay(
        lifecycle=Lifecycle(connect=settings.cluster.engine == "ray", cleanup="never"),
        ray_init_options={"ignore_reinit_error": True, "logging_level": "WARNING"},
    )


def settings_on(workspace: WorkspaceResource, ray_cluster: RayResource) -> Settings:
    """The workspace's settings, with the heavy work on Ray when the Ray resource is connected."""
    settings = workspace.settings()
    if not ray_cluster.connected:
        return settings
    import imagesearch.cluster  # noqa: F401  (Ray's environment, before anything imports Ray)

    cluster = settings.cluster.model_copy(update={"engine": "ray"})
    return settings.model_copy(update={"cluster": cluster})
