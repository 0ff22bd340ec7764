"""Test suites that adapters mix in (the fsspec `tests/abstract` idea): one contract per interface."""
