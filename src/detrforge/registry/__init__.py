"""Persistence of jobs, API keys and (later) model versions. Never imports the jobs."""
