"""Measuring cost: environment, CPU and GPU timing, compute floors, the predict path under load."""
