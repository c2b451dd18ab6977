"""The report's plain-language summary says what each stage looked for and found, and says
nothing of what no stage looked for."""

from dataclasses import replace

from appliance.phantoms.ct import Grid, generate_ct
from appliance.results.summary import ct_summary
from tests.support.truth import truth_findings

GRID = Grid((40, 80, 80), (4.0, 4.0, 4.0))


def test_a_pipeline_without_a_lesion_stage_says_nothing_of_lesions() -> None:
    phantom = generate_ct(21, GRID, lesion_count=2)
    text = ct_summary(truth_findings(phantom, ["1.2.3"], "ct_organs"))
    assert "Volumes: liver " in text
    assert "esion" not in text


def test_a_lesion_stage_that_found_none_says_so_and_one_that_found_some_counts_them() -> None:
    none = ct_summary(truth_findings(generate_ct(22, GRID, lesion_count=0), ["1.2.3"]))
    assert "Lesion findings in the liver: none." in none
    phantom = generate_ct(23, GRID, lesion_count=3)
    some = ct_summary(truth_findings(phantom, ["1.2.3"]))
    count = len({int(v) for v in set(phantom.lesions.ravel().tolist()) if v})
    assert f"Lesion findings in the liver: {count}; the largest is lesion 1 (" in some


def test_a_search_says_what_it_is_known_to_miss_whatever_it_found() -> None:
    """ "None" must not read as "there are none": a search whose model declares how many it
    reported of those present in studies it never saw says so, found or not, and one whose
    model declares nothing (an imported one) says that."""
    none = truth_findings(generate_ct(22, GRID, lesion_count=0), ["1.2.3"])
    (search,) = none.searches
    assert search.sensitivity is not None  # the reference lesion model declares it
    misses = f"The search {search.sensitivity.describe()}: what it does not report is not excluded."
    assert f"Lesion findings in the liver: none. {misses}" in ct_summary(none)
    some = ct_summary(truth_findings(generate_ct(23, GRID, lesion_count=3), ["1.2.3"]))
    assert f" mL. {misses}" in some
    undeclared = replace(none, searches=(replace(search, sensitivity=None),))
    unknown = "The search's model declares no sensitivity: what it does not report is not excluded."
    assert f"Lesion findings in the liver: none. {unknown}" in ct_summary(undeclared)


def test_many_doubtful_lesions_are_named_not_explained_and_never_called_the_largest() -> None:
    findings = truth_findings(generate_ct(23, GRID, lesion_count=3), ["1.2.3"])
    lesions = [s for s in findings.segments if s.finding_site is not None]
    largest = max(
        (m for m in findings.measurements if m.longest_axial_diameter_mm is not None),
        key=lambda m: m.longest_axial_diameter_mm or 0,
    )
    doubt = ("a mirrored pass of the model agrees 0.00, below 0.50",)
    flagged = {largest.segment}
    few = replace(
        findings,
        segments=tuple(
            replace(s, review=doubt) if s.number in flagged else s for s in findings.segments
        ),
    )
    text = ct_summary(few)
    doubted = next(s for s in few.segments if s.number == largest.segment)
    assert f"{doubted.label.capitalize()} is of low confidence, review: {doubt[0]}." in text
    assert f"the largest is {doubted.label} (" not in text, "the largest plain finding is named"

    findings = truth_findings(generate_ct(24, GRID, lesion_count=6), ["1.2.3"])
    lesions = [s for s in findings.segments if s.finding_site is not None]
    assert len(lesions) > 3
    every = replace(
        findings,
        segments=tuple(
            replace(s, review=doubt) if s.finding_site is not None else s for s in findings.segments
        ),
    )
    text = ct_summary(every)
    assert f"Lesion findings in the liver: {len(lesions)}, every one of low confidence." in text
    assert f"Of low confidence, review ({len(lesions)}, each finding says why)" in text
    assert doubt[0] not in text
