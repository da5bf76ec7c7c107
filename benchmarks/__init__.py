"""Benchmark scripts (run them as scripts; see RESULTS.md). A package so that tests can reuse the
planted-attack builders of ``benchmarks/target.py``."""
