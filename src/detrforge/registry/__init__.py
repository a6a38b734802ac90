"""Persistence (SQLAlchemy + Alembic; SQLite embedded, PostgreSQL in production): jobs, API keys,
hardware targets, benchmark history, registered models, versions, promotions with their gate
results, and the audit log; plus the pure gate checks (``gates.py``). Never imports the jobs."""
