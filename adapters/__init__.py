"""Adapters: one module per (capability, provider). Each imports its cloud or engine SDK lazily."""
