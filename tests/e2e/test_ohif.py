"""What a radiologist sees in OHIF 3: a study auto-routed through a real Orthanc comes back
with the appliance's results, and the viewer (the prebuilt OHIF in Debian's chromium, WebGL
in software) is asked what it shows: its own in-page segmentation compared with the
appliance's SEG slice by slice, every finding of the SR drawn on the image it references, and
for a cine, the outlined companion showing an outline on exactly the frames the model found.

Screenshots land in test-artifacts/ohif/ for people to look at."""

import contextlib
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread

from appliance.phantoms.ct import Grid, generate_ct
from appliance.phantoms.dicom import write_ct_series, write_us_cine
from appliance.phantoms.ultrasound import generate_cine
from tests.support.dcmtk import storescu
from tests.support.ohif import running_ohif
from tests.support.orthanc import AE_TITLE, Orthanc, running_orthanc
from tests.support.processes import serve, wait_for_modalities
from tests.support.services import free_port, missing_service

pytestmark = pytest.mark.usefixtures("dcmtk")
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ohif"
SOFTWARE_GL = ["--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader",
               "--enable-unsafe-swiftshader"]  # fmt: skip
_INSTANCE = re.compile(r"/instances/([0-9.]+)/frames/(\d+)")

SEGMENTATION = """() => {
  const out = [];
  for (const s of window.cornerstoneTools.segmentation.state.getSegmentations()) {
    for (const id of (s.representationData.Labelmap?.imageIds || [])) {
      const image = window.cornerstone.cache.getImage(id);
      if (!image) continue;
      const data = image.voxelManager ? image.voxelManager.getScalarData() : image.getPixelData();
      out.push({ref: image.referencedImageId, rows: image.rows, columns: image.columns,
                data: Array.from(data)});
    }
  }
  return out;
}"""
SEGMENTED = """() => {
  const all = window.cornerstoneTools?.segmentation?.state?.getSegmentations?.() || [];
  const ids = all.flatMap(s => s.representationData?.Labelmap?.imageIds || []);
  return ids.length > 0 && ids.every(id => window.cornerstone.cache.getImage(id));
}"""
SHOWING = """(uid) => (window.cornerstone.getEnabledElements()[0]?.viewport
  ?.getCurrentImageId?.() || '').includes(uid)"""
DRAWN_AT_LEAST = """(count) =>
  (window.cornerstoneTools?.annotation?.state?.getAllAnnotations?.() || [])
    .filter(a => a.metadata?.toolName === 'DICOMSRDisplay').length >= count"""
DRAWN = """() => (window.cornerstoneTools.annotation.state.getAllAnnotations() || [])
  .filter(a => a.metadata?.toolName === 'DICOMSRDisplay')
  .map(a => ({ref: a.metadata.referencedImageId, points: a.data.handles.points.length,
              text: JSON.stringify(a.data.label ?? a.data.text ?? '') +
                    JSON.stringify(a.data.cachedStats ?? {})}))"""
FRAME_COLOUR = """async (index) => {
  const viewport = window.cornerstone.getEnabledElements()[0].viewport;
  await viewport.setImageIdIndex(index);
  const id = viewport.getCurrentImageId();
  const image = await window.cornerstone.imageLoader.loadAndCacheImage(id);
  const pixels = image.getPixelData();
  const step = image.color ? (pixels.length / (image.rows * image.columns)) : 1;
  let tinted = 0;
  for (let i = 0; i + 2 < pixels.length; i += step) {
    const r = pixels[i], g = pixels[i + 1], b = pixels[i + 2];
    if (Math.abs(r - g) + Math.abs(g - b) > 60) tinted++;
  }
  return {id, tinted};
}"""


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        missing_service("Debian chromium (/usr/bin/chromium) is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=SOFTWARE_GL)
        yield browser
        browser.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


# OHIF's first-visit tour (Shepherd) lays an overlay over the viewer that swallows clicks; it
# comes up a moment after the thumbnails, later under load, so it is marked seen beforehand
# (OHIF keeps the tours seen in localStorage) rather than dismissed after a guessed wait.
TOUR_SEEN = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))"


def open_study(browser: Any, url: str, study_uid: str) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.add_init_script(TOUR_SEEN)
    page.goto(f"{url}/viewer?StudyInstanceUIDs={study_uid}")
    page.wait_for_selector('[data-cy^="study-browser-thumbnail"]', timeout=90_000)
    time.sleep(2)
    confirm = page.get_by_text("Confirm and hide")  # a first-run dialog
    if confirm.count():
        confirm.first.click()
    return page


def show(page: Any, series_description: str, ready: str, arg: object = None) -> None:
    """Double-click a series in the study browser, confirm loading a SEG or SR over it, and
    wait until the page says `ready` (a JavaScript predicate of `arg`)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.get_by_text(series_description).first.dblclick()
    with contextlib.suppress(PlaywrightTimeout):  # no question for a plain image series
        page.get_by_role("button", name="Yes").first.click(timeout=3_000)
    page.wait_for_function(ready, arg=arg, timeout=90_000)
    time.sleep(1)  # drawn, for the screenshot


def results_at(pacs: Orthanc) -> dict[str, Dataset]:
    """The appliance's objects at the PACS, by series description's first words."""
    found = {}
    for identifier in pacs.get("/instances"):
        ds = dcmread(BytesIO(pacs.get(f"/instances/{identifier}/file")))
        if str(ds.get("SeriesDescription", "")).startswith("AI "):
            found[str(ds.SeriesDescription).split(":")[0]] = ds
    return found


@contextmanager
def routed(tmp_path: Path, files: list[Path], expected: list[str]) -> Iterator[tuple[Orthanc, str]]:
    """Orthanc auto-routing `files`' study to a running appliance, once its results (the
    `expected` modalities, sources included) are back; the PACS and the OHIF URL."""
    port = free_port()
    with running_orthanc(tmp_path / "pacs", dicomweb=True, route_to=("APPLIANCE", port)) as pacs:
        appliance = serve(tmp_path, port, pacs.dicom_port, {})
        try:
            assert storescu(pacs.dicom_port, files, called=AE_TITLE).returncode == 0
            held = wait_for_modalities(pacs, expected, 240)
            log = (tmp_path / "appliance.log").read_text(errors="replace")[-3000:]
            assert held == sorted(expected), log
            with running_ohif(pacs.url) as url:
                yield pacs, url
        finally:
            appliance.terminate()
            appliance.wait(timeout=30)


def test_ohif_shows_the_ct_seg_voxel_for_voxel_and_draws_every_finding(
    browser: Any, tmp_path: Path
) -> None:
    ct = write_ct_series(generate_ct(13, Grid((20, 48, 48), (5.0, 7.0, 7.0))), tmp_path / "ct")
    study_uid = str(dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
    with routed(tmp_path, ct, ["CT"] * len(ct) + ["SEG", "SR"]) as (pacs, url):
        made = results_at(pacs)
        seg = hd.seg.Segmentation.from_dataset(made["AI SEG"])
        page = open_study(browser, url, study_uid)
        show(page, "AI SEG", SEGMENTED)
        shot(page, "ct-seg")
        shown = page.evaluate(SEGMENTATION)
        assert shown, "OHIF made no segmentation of the SEG"
        compared = 0
        for slice_ in shown:
            match = _INSTANCE.search(slice_["ref"])
            assert match is not None, slice_["ref"]
            ours = seg.get_pixels_by_source_instance(
                [match.group(1)], combine_segments=True, skip_overlap_checks=True
            )[0]
            theirs = np.array(slice_["data"]).reshape(slice_["rows"], slice_["columns"])
            assert np.array_equal(theirs, ours), f"slice {match.group(1)} differs"
            compared += 1
        assert compared == len(ct), "every slice compared"

        sr = made["AI report"]
        drawn_by_us = _drawn(sr)
        page = open_study(browser, url, study_uid)
        show(page, "AI report", DRAWN_AT_LEAST, len(drawn_by_us))
        shot(page, "ct-sr")
        drawn = page.evaluate(DRAWN)
        assert len(drawn) == len(drawn_by_us), "every finding of the SR drawn"
        assert sorted((_INSTANCE.search(d["ref"]).group(1), d["points"]) for d in drawn) == sorted(  # type: ignore[union-attr]
            (uid, points) for uid, _, points, _ in drawn_by_us
        )
        labels = " ".join(d["text"] for d in drawn)
        for _, _, _, values in drawn_by_us:
            assert any(value in labels for value in values), f"{values} listed"


def test_ohif_shows_the_outlined_cine_and_draws_each_frames_outline(
    browser: Any, tmp_path: Path
) -> None:
    cine = write_us_cine(generate_cine(300_002, frames=12), tmp_path / "us" / "cine.dcm")
    study_uid = str(dcmread(cine, stop_before_pixels=True).StudyInstanceUID)
    with routed(tmp_path, [cine], ["US", "SEG", "SR", "US"]) as (pacs, url):
        made = results_at(pacs)
        outlined_uid = str(made["AI outlines"].SOPInstanceUID)
        present = sorted(frame for _, frame, _, _ in _drawn(made["AI report"]))
        assert present, "the model found the cyst in some frame"
        page = open_study(browser, url, study_uid)
        show(page, "AI outlines", SHOWING, outlined_uid)
        for frame in range(1, int(made["AI outlines"].NumberOfFrames) + 1):
            seen = page.evaluate(FRAME_COLOUR, frame - 1)
            assert outlined_uid in seen["id"]
            assert (seen["tinted"] > 0) == (frame in present), f"frame {frame}: {seen['tinted']}"
            if frame == present[0]:
                shot(page, "us-outlined")

        page = open_study(browser, url, study_uid)
        show(page, "AI report", DRAWN_AT_LEAST, len(present))
        shot(page, "us-sr")
        drawn = page.evaluate(DRAWN)
        frames = sorted(int(_INSTANCE.search(d["ref"]).group(2)) for d in drawn)  # type: ignore[union-attr]
        assert frames == present, "an outline drawn on each frame where the cyst was found"


def _drawn(sr: Dataset) -> list[tuple[str, int, int, list[str]]]:
    """Per finding of a TID 1500 SR that draws something: the source instance and frame its
    SCOORD is on, its number of points, and its measured values as the SR states them."""
    findings: dict[str, dict[str, Any]] = {}
    for container in sr.ContentSequence:
        if container.ConceptNameCodeSequence[0].CodeMeaning != "Imaging Measurements":
            continue
        for group in container.ContentSequence:
            items = list(group.ContentSequence)
            (tracking,) = [
                str(item.UID)
                for item in items
                if item.ConceptNameCodeSequence[0].CodeValue == "112040"  # Tracking UID
            ]
            finding = findings.setdefault(tracking, {"values": []})
            for item in items:
                if item.ValueType == "NUM":
                    finding["values"].append(str(item.MeasuredValueSequence[0].NumericValue))
                if item.ValueType == "SCOORD":
                    (image,) = item.ContentSequence
                    (reference,) = image.ReferencedSOPSequence
                    finding["uid"] = str(reference.ReferencedSOPInstanceUID)
                    finding["frame"] = int(reference.get("ReferencedFrameNumber", 1))
                    finding["points"] = len(item.GraphicData) // 2
    return [
        (f["uid"], f["frame"], f["points"], f["values"]) for f in findings.values() if "uid" in f
    ]
