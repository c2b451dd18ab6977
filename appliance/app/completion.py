"""Completion: instances stored by the listener are folded into their studies, and a study
that has gone quiet (or whose count hints say it is whole, or whose sender released the
association that delivered it whole, the job then holding its results for a short settle)
becomes complete with a job for its current version.
The rules are `domain.assembly`; the compare-and-set that lets several sweepers run at once
is `store.study_ledger`.
"""

import logging
from datetime import UTC, datetime

from appliance.store.study_ledger import StudyLedger

LOG = logging.getLogger(__name__)


def complete_studies(studies: StudyLedger) -> int:
    """Fold new instances into their studies, then complete the studies that are due; how
    many were completed."""
    now = datetime.now(UTC)
    studies.fold_pending(now)
    completed = studies.start_released(now) + studies.complete_due(now)
    for study in completed:
        LOG.info(
            "study %d version %d complete (%s): job %d queued",
            study.study_id,
            study.version,
            study.reason.value,
            study.job_id,
        )
    return len(completed)
