"""`RecordingBackend` keeps a bounded, evenly spread sample of what each model reads."""

import numpy as np
from numpy.typing import NDArray

from appliance.domain.pipelines import ModelRef
from appliance.inference.backend import RecordingBackend

FIRST, SECOND = ModelRef("first", 1), ModelRef("second", 2)


class Doubling:
    """A stand-in model server (pure logic under test): every output is twice its input."""

    def ready(self, model: ModelRef) -> bool:
        return True

    def metadata(self, model: ModelRef) -> None:
        raise NotImplementedError

    def infer(self, model: ModelRef, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        return batch * 2


def test_inputs_are_kept_evenly_spread_per_model_and_outputs_pass_through() -> None:
    recording = RecordingBackend(Doubling(), keep=4)  # type: ignore[arg-type]
    for start in range(0, 20, 2):  # twenty inputs, two a call
        batch = np.arange(start, start + 2, dtype=np.float32).reshape(2, 1)
        np.testing.assert_array_equal(recording.infer(FIRST, batch), batch * 2)
        batch[:] = -1  # the caller works in place on its arrays: what is kept is a copy
    recording.infer(SECOND, np.full((1, 1), 7, np.float32))
    kept = [float(one[0]) for one in recording.inputs[FIRST]]
    assert kept == [0.0, 8.0, 16.0]  # the multiples of the stride the twenty inputs reached
    assert [float(one[0]) for one in recording.inputs[SECOND]] == [7.0]


def test_no_more_than_keep_are_held_however_long_the_run() -> None:
    recording = RecordingBackend(Doubling(), keep=5)  # type: ignore[arg-type]
    for index in range(1000):
        recording.infer(FIRST, np.full((1, 3), index, np.float32))
    kept = [float(one[0]) for one in recording.inputs[FIRST]]
    # the stride has doubled to 256: evenly spaced from the first input to within one stride
    # of the last
    assert kept == [0.0, 256.0, 512.0, 768.0]
