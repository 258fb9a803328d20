"""Resources shared by the assets."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

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
