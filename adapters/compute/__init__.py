"""Compute adapters: run `python -m stackwise.workloads.<kind> --spec FILE` somewhere and follow it."""
