"""Consistent changes: co-typicality of translated patches, clustered: run_changes(ChangesConfig(...))."""
