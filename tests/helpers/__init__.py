"""Reusable test helpers (real processes, real sockets)."""
