"""Alembic migrations of the job store (``services.api.db``): ``env.py`` and one module per revision."""
