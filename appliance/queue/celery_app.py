"""The Celery app: broker from settings, at-least-once delivery of job messages.

Tasks are acknowledged only after they ran (acks_late) and are given back when the worker
process dies (reject_on_worker_lost). Brokers differ in what they then do: RabbitMQ redelivers
at once, Redis after its visibility timeout, and kombu's SQLAlchemy transport (the embedded
default) never; so the sweeper's lease check in the database is what guarantees that a job
whose worker died runs again. Running a job twice is harmless: the claim lets one run at a
time and result UIDs are deterministic.
"""

from celery import Celery
from kombu import Exchange, Queue

from appliance.config import QueueSettings
from appliance.domain.routing import Priority

PROCESS_STUDY = "appliance.process_study"
QUEUES = (Priority.URGENT.value, Priority.NORMAL.value)
SQL_PREFIX = "sqla+"


def make_app(settings: QueueSettings) -> Celery:
    embedded = settings.broker_url.startswith(SQL_PREFIX)
    broker = settings.broker_url.removeprefix(SQL_PREFIX)  # the database URL alone
    app = Celery("appliance", broker=broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_time_limit=settings.time_limit_seconds,
        task_soft_time_limit=settings.time_limit_seconds * 0.9,
        task_queues=[
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES
        ],
        task_default_queue=Priority.NORMAL.value,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    if embedded:  # kombu's SQL transport, polling more often
        app.conf.broker_transport = "appliance.queue.transport:SqlTransport"
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Redis redelivers an unacknowledged task after this long; the lease says the same.
        app.conf.broker_transport_options = {"visibility_timeout": settings.lease_seconds}
    return app
