"""The job queue: the Celery app and its tasks. Messages carry job IDs; the database holds
every job's state."""
