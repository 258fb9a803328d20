"""Promotion decisions as the registry keeps them: tags on the challenger's version, the `champion`
alias moved, and the record a rollback reads to move it back."""

from __future__ import annotations

import time
from dataclasses import dataclass

from imagesearch.models.registry.store import connect
from imagesearch.models.registry.versions import CHAMPION, alias_version
from imagesearch.settings import Settings


def record_promotion(
    settings: Settings, challenger: str, *, promote: bool, reason: str, tags: dict[str, str] | None = None
) -> None:
    """Tag the challenger's version with the decision, its reason and its numbers; move `champion`
    when promoted (the champion it replaced and the time are tags too: what a rollback needs)."""
    client = connect(settings)
    name, version = settings.model.registered_name, challenger.rsplit("/", 1)[1]
    previous = alias_version(settings, CHAMPION)
    decided = {
        **(tags or {}),
        "promotion.decision": "promoted" if promote else "kept",
        "promotion.reason": reason,
    }
    if promote:
        decided |= {"promotion.previous_champion": previous or "", "promotion.at": f"{time.time():.3f}"}
    for key, value in decided.items():
        client.set_model_version_tag(name, version, key, value)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)


@dataclass(frozen=True, slots=True)
class PromotionRecord:
    champion: str  # models:/<name>/<version>, as the service logs it
    previous: str
    promoted_at: float  # unix seconds


def promotion_record(settings: Settings) -> PromotionRecord | None:
    """How the current champion got the alias: the champion before it and when (None: the rule did
    not promote it, e.g. v0 by default, or a person moved the alias by hand)."""
    version = alias_version(settings, CHAMPION)
    if version is None:
        return None
    name = settings.model.registered_name
    tags = connect(settings).get_model_version(name, version).tags
    previous, at = tags.get("promotion.previous_champion"), tags.get("promotion.at")
    if not previous or not at or tags.get("promotion.decision") != "promoted":
        return None
    return PromotionRecord(f"models:/{name}/{version}", f"models:/{name}/{previous}", float(at))


def rollback_reason(settings: Settings, reference: str) -> str | None:
    """Why the version was rolled back, or None when it never was."""
    name, version = settings.model.registered_name, reference.rsplit("/", 1)[1]
    return connect(settings).get_model_version(name, version).tags.get("rollback.reason")


def roll_back(settings: Settings, record: PromotionRecord, reason: str) -> None:
    """Move `champion` back to the version before, and record why on the version rolled back."""
    client = connect(settings)
    name = settings.model.registered_name
    version, previous = record.champion.rsplit("/", 1)[1], record.previous.rsplit("/", 1)[1]
    client.set_model_version_tag(name, version, "promotion.decision", "rolled back")
    client.set_model_version_tag(name, version, "rollback.reason", reason)
    client.set_model_version_tag(name, version, "rollback.at", f"{time.time():.3f}")
    client.set_registered_model_alias(name, CHAMPION, previous)
