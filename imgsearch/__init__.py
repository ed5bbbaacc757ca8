"""Shared core of the indexer and the web app: settings, weights, embedder, images, store."""
