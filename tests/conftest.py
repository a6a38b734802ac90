"""Shared fixtures; heavier ones live in the ``fixtures_*`` plugin modules beside this file."""

pytest_plugins = ["fixtures_s3", "fixtures_db", "fixtures_cluster", "fixtures_models"]
