"""Bundles to object storage: ``collector upload`` and its queue of pending uploads."""
