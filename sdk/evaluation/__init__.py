"""Evaluation suites, one small module each: pure metric functions (checked in tests against
their reference library or hand-computed values) plus a `run(...)` that applies them to records.

Nothing heavy loads at import: rouge-score, sacrebleu, fairlearn, torch and matplotlib load
inside the functions that need them.
"""
