"""The audit and state database: SQLAlchemy 2.0 models, sessions, Alembic migrations."""
