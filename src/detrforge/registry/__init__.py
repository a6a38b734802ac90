"""Persistence (SQLAlchemy + Alembic; SQLite embedded, PostgreSQL in production): the stores of
jobs, API keys, hardware targets, benchmark history, registered models and versions, promotions
with their gate results, and the append-only audit log; plus the pure gate checks (``gates.py``).
Never imports the jobs, the control layer or the API."""
