"""Snapshot and restore of kernel gtp devices, PDP contexts, routes and SGi masquerade."""
