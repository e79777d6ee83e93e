"""Preparing datasets for the bundles: shared helpers (common), built-in datasets, own folders, the command."""
