"""Datasets: fetching sources, reading official formats, splits and OOD sets."""
