"""Ingest: catalogue extraction, incremental planning, decoding and per-image signatures."""
