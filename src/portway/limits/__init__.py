"""Limits: one LimitSpec, counters in memory or Redis, which limits apply to a caller, and admission."""
