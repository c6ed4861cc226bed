"""Benchmarks, grouped by the question each answers; run each from the repository root as a module,
e.g. ``python -m benchmarks.speed.gpu_inference`` (benchmarks/NOTES.md lists them)."""
