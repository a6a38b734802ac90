"""Entrypoints that run on the Ray cluster. Never imports fastapi or the registry."""
