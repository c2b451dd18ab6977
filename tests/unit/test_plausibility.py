"""A finding against its label's published bounds: every reason it needs review, or none."""

from appliance.domain.plausibility import Observed, Plausible, review_reasons

LIVER = Plausible(volume_ml=(843, 1719), mean_hu=(30, 180), max_parts=1)


def test_a_plausible_finding_needs_no_review() -> None:
    seen = Observed(volume_ml=1300, mean_hu=110, parts=1)
    assert review_reasons(LIVER, seen) == ()
    assert review_reasons(None, Observed(volume_ml=1e6)) == ()  # no bounds declared


def test_every_failed_bound_is_a_reason() -> None:
    seen = Observed(volume_ml=2578.4, mean_hu=-400, parts=3)
    assert review_reasons(LIVER, seen) == (
        "volume 2578 mL outside the plausible 843 to 1719 mL",
        "mean density -400 HU outside the plausible 30 to 180 HU",
        "in 3 separate parts (at most 1 expected)",
    )


def test_a_structure_cut_by_the_field_of_view_is_flagged_and_small_for_that_reason_only() -> None:
    cut = Observed(volume_ml=400, mean_hu=100, parts=1, cut_by_field_of_view=True)
    assert review_reasons(LIVER, cut) == (
        "cut by the field of view: its volume is of the part imaged",
    )
    huge = Observed(volume_ml=3000, mean_hu=100, parts=1, cut_by_field_of_view=True)
    assert len(review_reasons(LIVER, huge)) == 2  # too large even though cut
    vessel = Plausible(mean_hu=(30, 400))  # no volume bounds: being cut is expected
    assert (
        review_reasons(vessel, Observed(volume_ml=80, mean_hu=150, cut_by_field_of_view=True)) == ()
    )


def test_frames_a_share_of_the_frame_and_the_models_confidence() -> None:
    cyst = Plausible(area_fraction=(0.0, 0.15), min_confidence=0.75)
    assert review_reasons(cyst, Observed(area_fraction=0.03, confidence=0.95)) == ()
    assert review_reasons(cyst, Observed(area_fraction=0.4, confidence=0.6)) == (
        "share of the frame 0.4 outside the plausible 0 to 0.15",
        "model confidence 0.60 below 0.75",
    )


def test_a_finding_a_mirrored_pass_disagrees_with_needs_review() -> None:
    lesion = Plausible(min_agreement=0.5)
    assert review_reasons(lesion, Observed(volume_ml=2, agreement=0.8)) == ()
    assert review_reasons(lesion, Observed(volume_ml=2)) == ()  # not measured: nothing to say
    assert review_reasons(lesion, Observed(volume_ml=2, agreement=0.2)) == (
        "a mirrored pass of the model agrees 0.20, below 0.50",
    )


def test_a_finding_as_dense_as_the_tissue_around_it_needs_review() -> None:
    lesion = Plausible(min_contrast_hu=25)
    assert review_reasons(lesion, Observed(volume_ml=2, contrast_hu=-40)) == ()  # brighter
    assert review_reasons(lesion, Observed(volume_ml=2, contrast_hu=60)) == ()
    assert review_reasons(lesion, Observed(volume_ml=2)) == ()  # nothing around it
    assert review_reasons(lesion, Observed(volume_ml=2, contrast_hu=12.4)) == (
        "12 HU from the tissue around it, below 25 HU",
    )


def test_a_lesion_too_small_to_characterise_needs_review() -> None:
    lesion = Plausible(min_diameter_mm=10)
    assert review_reasons(lesion, Observed(volume_ml=2, diameter_mm=10.0)) == ()
    assert review_reasons(lesion, Observed(volume_ml=2)) == ()  # not a lesion: not measured
    assert review_reasons(lesion, Observed(volume_ml=0.1, diameter_mm=7.6)) == (
        "8 mm across, too small to characterise (below 10 mm)",
    )


def test_a_structure_far_denser_or_fainter_than_its_pair_needs_review() -> None:
    kidney = Plausible(mean_hu=(10, 260), pair="kidney_right", max_pair_difference_hu=40)
    assert review_reasons(kidney, Observed(mean_hu=150, pair_difference_hu=-12)) == ()
    assert review_reasons(kidney, Observed(mean_hu=150)) == ()  # no pair found: nothing to say
    assert review_reasons(kidney, Observed(mean_hu=46, pair_difference_hu=-93.4)) == (
        "mean density 93 HU from its pair's (kidney right), over 40 HU",
    )
