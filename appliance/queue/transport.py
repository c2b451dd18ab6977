"""kombu's SQL transport (the embedded broker), polling every 0.1 s rather than every second.

A worker on this transport learns of a new job only by polling its table, and the default
second would be the largest wait on a job's way to a worker. kombu hands this transport's
options straight to SQLAlchemy's create_engine, so `polling_interval` cannot be set there.
"""

from kombu.transport import sqlalchemy

POLLING_SECONDS = 0.1


class SqlTransport(sqlalchemy.Transport):  # type: ignore[misc]
    polling_interval = POLLING_SECONDS
