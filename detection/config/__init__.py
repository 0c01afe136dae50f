"""Configs: the YAML loader with _base_ inheritance and --set overrides (loader), the key checks (validation) and the
typed sections with every default (schema)."""
