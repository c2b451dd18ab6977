"""The database: SQLAlchemy models, Alembic migrations, and one ledger per stage of the data
path (ingest, studies, jobs, outbox, accounts) with the audit trail written inside each
change's own transaction. SQLite embedded, PostgreSQL in production."""
