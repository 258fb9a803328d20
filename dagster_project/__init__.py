"""Dagster wiring for imagesearch: resources, jobs, schedules and sensors around the assets."""
