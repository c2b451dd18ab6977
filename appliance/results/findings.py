"""A run's findings as the SEG and SR encoders take them: the segments and measurements of
`domain.findings`, with the label map (CT) or the per-frame masks (ultrasound) on the source
grid.
"""

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from appliance.domain.findings import (
    FrameArea,
    RunIdentity,
    Search,
    Segment,
    VolumeMeasurement,
    Withheld,
)


@dataclass(frozen=True)
class CTFindings:
    identity: RunIdentity
    labels: NDArray[np.uint8]  # segment numbers on the source grid (slice, row, column)
    segments: tuple[Segment, ...]
    measurements: tuple[VolumeMeasurement, ...]
    searches: tuple[Search, ...] = ()  # the stages that looked for separate findings
    withheld: tuple[Withheld, ...] = ()  # low-confidence findings kept from delivery


@dataclass(frozen=True)
class UltrasoundFindings:
    identity: RunIdentity
    masks: NDArray[np.bool_]  # (frames, rows, columns) on the source frames
    segment: Segment
    present: tuple[FrameArea, ...]  # the frames where the structure is present
    absent: tuple[int, ...] = ()  # frames (1-based) the model is confident lack it
    withheld: tuple[Withheld, ...] = ()  # low-confidence frames kept from delivery
