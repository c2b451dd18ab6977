"""The report's plain-language summary says what each stage looked for and found, and says
nothing of what no stage looked for."""

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
