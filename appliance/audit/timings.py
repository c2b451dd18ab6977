"""Stage timings, written in the same transaction as the state change that ends the stage."""

from datetime import datetime

from sqlalchemy.orm import Session

from appliance.audit.models import StageTiming
from appliance.domain.jobs import Stage


def record_timing(
    session: Session, job_id: int, stage: Stage, seconds: float, now: datetime, model: str = ""
) -> None:
    session.add(
        StageTiming(
            job_id=job_id,
            stage=stage.value,
            model=model,
            seconds=max(seconds, 0.0),
            recorded_at=now,
        )
    )
