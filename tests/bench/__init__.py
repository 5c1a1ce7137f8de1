"""Benchmarks at smoke size: each benchmark command runs end to end at a tiny size, so the
commands in docs/BENCHMARKS.md keep working. No timing is asserted here (figures come from the
full-size runs); outcomes are (counts, calls, convergence)."""
