"""Machinery's benchmark: ``make bench`` (see README.md in this folder)."""
