"""How many of the independent CT generator's lesions a reader could find at all when it must
search the liver for them, with a given number of false lesions a study allowed.

`unseen_ct.detectability` says how far a lesion stands out to a reader told where it is. A
search must also pass over every other place in the liver, and each is a chance for the noise
to look like a lesion; allowing one false lesion a study sets how high a reader's threshold
must be. The observer here is as strong as can be written down: it knows each lesion's exact
shape and contrast, the study without it and the noise's spectrum, and lacks only where the
lesion is. It slides the lesion's prewhitened matched filter over the liver (the scan
statistic), calls a lesion wherever the filter's output (in standard deviations of its noise)
passes a threshold, one connected region a call, and gets each lesion's threshold to itself, set
so that the noise alone gives `false_per_study` calls where no true lesion lies. Its chance of
finding each lesion is a bound no reader passes, human or model, up to the Monte Carlo's
spread. Run: `python -m tests.support.search_bound` (20 studies, 12 to 14 min on one core).
"""

import argparse
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from appliance.inference.measurements import number_lesions
from tests.support.unseen import DETECTABILITY_BANDS, DETECTABLE_MM, _band
from tests.support.unseen_ct import (
    LIVER,
    MatchedFilter,
    Study,
    centre_voxel,
    correlate,
    unseen_study,
)

THRESHOLDS = np.arange(2.5, 7.01, 0.05)  # in standard deviations of the filter's noise


@dataclass(frozen=True)
class Searched:
    """One true lesion over 10 mm: its d' (told where it is), the threshold that allows the
    false lesions asked for, and the chance that the search finds it."""

    d_prime: float
    threshold: float
    found: float


def search_lesion(
    study: Study,
    numbered: NDArray[np.uint16],
    number: int,
    false_per_study: float,
    draws: int,
    rng: np.random.Generator,
) -> Searched:
    """The searching observer of the module's docstring on lesion `number` of `numbered`."""
    lesion = numbered == number
    matched = MatchedFilter.of(study, lesion)
    shape = matched.shape
    # Where a call would touch a true lesion: the lesion's footprint, placed there, overlaps one.
    at_origin = tuple(-c for c in centre_voxel(lesion))
    footprint = np.fft.rfftn(np.roll(lesion.astype(np.float64), at_origin, axis=(0, 1, 2)))
    touches = correlate(footprint, np.fft.rfftn((numbered > 0).astype(np.float64)), shape) > 0.5
    own = correlate(footprint, np.fft.rfftn(lesion.astype(np.float64)), shape) > 0.5
    elsewhere = (study.organs == LIVER) & ~touches
    (box,) = ndimage.find_objects(elsewhere.astype(np.uint8))
    lesion_answer = matched.answer(matched.in_place)[own]
    where = elsewhere[box]
    false = np.zeros(THRESHOLDS.size)
    peaks = np.empty(draws)
    for draw in range(draws):
        noise = matched.answer(matched.noise(rng))
        above = noise[box][..., None] > THRESHOLDS
        for index in range(THRESHOLDS.size):
            false[index] += ndimage.label(above[..., index] & where)[1]
        peaks[draw] = float((noise[own] + lesion_answer).max())
    threshold = _threshold(false / draws, false_per_study)
    return Searched(matched.d_prime, threshold, float((peaks > threshold).mean()))


def _threshold(false: NDArray[np.float64], allowed: float) -> float:
    """The lowest threshold whose false calls, interpolated in their logarithm, are `allowed`."""
    over = np.nonzero(false <= allowed)[0]
    if over.size == 0:
        raise ValueError("the thresholds searched stop short of so few false calls")
    index = int(over[0])
    if index == 0:
        return float(THRESHOLDS[0])
    low, high = np.log(false[index - 1]), np.log(max(false[index], 1e-3))
    share = (low - np.log(allowed)) / (low - high)
    return float(THRESHOLDS[index - 1] + share * (THRESHOLDS[index] - THRESHOLDS[index - 1]))


def search_study(
    study: Study, false_per_study: float, draws: int, rng: np.random.Generator
) -> list[Searched]:
    """`search_lesion` on each true lesion over 10 mm of `study`, numbered as `ct_scores`
    numbers them."""
    numbered, measured = number_lesions(study.lesions > 0, study.spacing)
    return [
        search_lesion(study, numbered, m.tracking_number, false_per_study, draws, rng)
        for m in measured
        if m.longest_axial_diameter_mm > DETECTABLE_MM
    ]


def main(seeds: Iterable[int], false_per_study: float, draws: int) -> None:
    rng = np.random.default_rng(0)
    searched: list[Searched] = []
    for seed in seeds:
        lesions = search_study(unseen_study(seed), false_per_study, draws, rng)
        for item in lesions:
            print(
                f"study {seed}: d' {item.d_prime:5.1f}, threshold {item.threshold:4.2f}, "
                f"found {item.found:4.2f}",
                flush=True,
            )
        searched += lesions
    print(
        f"\n{len(searched)} lesions over 10 mm; false lesions a study allowed: {false_per_study:g}"
    )
    for band in DETECTABILITY_BANDS:
        inside = [s for s in searched if _band(DETECTABILITY_BANDS, s.d_prime) == band]
        print(f"d' {band}: {sum(s.found for s in inside):.1f} of {len(inside)} expected found")
    total = sum(s.found for s in searched)
    print(f"all: {total:.1f} of {len(searched)} expected found, {total / len(searched):.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs=2, default=(800_000, 800_020))
    parser.add_argument("--false-per-study", type=float, default=1.0)
    parser.add_argument("--draws", type=int, default=20)
    arguments = parser.parse_args()
    main(range(*arguments.seeds), arguments.false_per_study, arguments.draws)
