"""Adapters, tracks, deployments, rollback (and, next, consolidation)."""
