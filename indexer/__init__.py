"""Bulk indexer: walk -> decode -> embed -> bulk into Elasticsearch."""
