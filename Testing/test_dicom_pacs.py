"""The fused series in a real PACS: a real Orthanc server (Debian's ``orthanc``) started by the test.

The reference CT series and the fused series (grey and colour, written by ``medfusion fuse --format
dicom``) are stored through Orthanc's REST API; Orthanc must then file the fused series in the CT's
patient and study with the CT's Frame of Reference, and the instances downloaded back from it must
stack onto the CT's grid (SimpleITK, within 1e-3 mm).

Run as a script to print the round trip and draw the figure of the README:
``python Testing/test_dicom_pacs.py docs/dicom_orthanc_roundtrip.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_phantoms import write_ct_series  # noqa: E402

# Debian installs the server in /usr/sbin, which is not on every user's PATH.
ORTHANC = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")
OBLIQUE = {"row_cosines": (0.94, 0.342, 0.0), "column_cosines": (-0.3304, 0.9077, 0.2588)}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def orthanc_server(workdir: Path) -> Iterator[str]:
    """A fresh Orthanc with its storage in ``workdir``; yields its REST base URL, stops it after.

    Orthanc 1.10 has no bind-address option: its HTTP server listens on a free port and, with
    RemoteAccessAllowed false, answers loopback clients only; its DICOM server is switched off (the
    test stores through REST), so nothing else listens.
    """
    port = _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "MedFusionTest",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "Plugins": [],
    }
    (workdir / "orthanc.json").write_text(json.dumps(config))
    log = open(workdir / "orthanc.log", "wb")
    server = subprocess.Popen([ORTHANC, str(workdir / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                get(url, "/system")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log_text = (workdir / "orthanc.log").read_text()[-2000:]
                    raise RuntimeError(f"Orthanc did not start: {log_text}") from None
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def get(url: str, path: str):
    with urllib.request.urlopen(url + path, timeout=30) as response:
        body = response.read()
    return json.loads(body) if response.headers.get_content_type() == "application/json" else body


def store(url: str, files: list[Path]) -> None:
    """POST each DICOM file to /instances; Orthanc answers Success (or AlreadyStored)."""
    for path in files:
        request = urllib.request.Request(url + "/instances", data=path.read_bytes(), method="POST")
        request.add_header("Content-Type", "application/dicom")
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert answer["Status"] in ("Success", "AlreadyStored"), answer


def series_of_study(url: str, study: str) -> list[dict]:
    """The study's series as Orthanc lists them: number, description, modality, instance count."""
    listed = []
    for series_id in get(url, f"/studies/{study}")["Series"]:
        series = get(url, f"/series/{series_id}")
        tags = series["MainDicomTags"]
        listed.append({"id": series_id, "SeriesNumber": int(tags.get("SeriesNumber", 0)),
                       "SeriesDescription": tags.get("SeriesDescription", ""), "Modality": tags.get("Modality", ""),
                       "SeriesInstanceUID": tags["SeriesInstanceUID"], "instances": len(series["Instances"]),
                       "ParentStudy": series["ParentStudy"]})  # fmt: skip
    return sorted(listed, key=lambda s: s["SeriesNumber"])


def download_series(url: str, series_id: str, directory: Path) -> sitk.Image:
    """The series' instances fetched from Orthanc into ``directory``, read back with SimpleITK."""
    from MedFusionLib.io import read_image

    directory.mkdir(parents=True)
    for index, instance in enumerate(get(url, f"/series/{series_id}")["Instances"]):
        (directory / f"{index:04d}.dcm").write_bytes(get(url, f"/instances/{instance}/file"))
    return read_image(directory)


def frame_of_reference(url: str, series_id: str) -> str:
    instance = get(url, f"/series/{series_id}")["Instances"][0]
    return get(url, f"/instances/{instance}/simplified-tags")["FrameOfReferenceUID"]


def grid_difference_mm(image: sitk.Image, reference: sitk.Image) -> float:
    """Largest distance (mm) between the two images' voxel centres over the 8 corners of the grid."""
    assert image.GetSize() == reference.GetSize()
    corners = np.array(np.meshgrid(*[(0, s - 1) for s in reference.GetSize()])).reshape(3, -1).T
    return max(
        float(np.linalg.norm(np.subtract(image.TransformIndexToPhysicalPoint(c.tolist()),
                                         reference.TransformIndexToPhysicalPoint(c.tolist()))))
        for c in corners
    )  # fmt: skip


def fuse_into_dicom(workdir: Path) -> dict:
    """Write the oblique CT, an MR-like and a PET-like volume on its grid, and fuse both to DICOM with
    the command line (grey: average of CT and MR; colour: the PET through --functional)."""
    from MedFusionLib.cli import main
    from MedFusionLib.io import read_image

    ct = write_ct_series(workdir / "ct", shape=(12, 48, 56), spacing=(0.9, 0.8, 2.5), **OBLIQUE)
    reference = read_image(workdir / "ct")
    hu = sitk.GetArrayFromImage(reference).astype(np.float32)
    mr = np.where(hu > -500, 900 - np.abs(hu - 200), 0).astype(np.float32)
    pet = np.where(hu == 120, 8.0, np.where(hu > -500, 1.0, 0.0)).astype(np.float32)
    for name, array in (("mr", mr), ("pet", pet)):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(reference)
        sitk.WriteImage(image, str(workdir / f"{name}.nii.gz"))
    common = ["--format", "dicom", "--model", "average", "--registration", "none", "--progress", "none"]
    assert main(["fuse", str(workdir / "ct"), str(workdir / "mr.nii.gz"), "-o", str(workdir / "fused"), *common]) == 0
    assert main(["fuse", str(workdir / "ct"), str(workdir / "pet.nii.gz"), "-o", str(workdir / "colour"),
                 "--functional", "hot", *common]) == 0  # fmt: skip
    return ct


@pytest.fixture
def orthanc(tmp_path) -> Iterator[str]:
    if ORTHANC is None:
        pytest.skip("Orthanc (Debian package orthanc) is not installed")
    with orthanc_server(tmp_path / "orthanc") as url:
        yield url


def test_fused_series_is_filed_in_the_cts_study_by_orthanc_on_its_grid(tmp_path, orthanc):
    pytest.importorskip("highdicom")
    from MedFusionLib.io import read_image

    ct = fuse_into_dicom(tmp_path)
    store(orthanc, sorted((tmp_path / "ct").iterdir()))
    (study,) = get(orthanc, "/studies")
    before = series_of_study(orthanc, study)
    assert [s["SeriesInstanceUID"] for s in before] == [ct["SeriesInstanceUID"]]

    store(orthanc, sorted((tmp_path / "fused").iterdir()) + sorted((tmp_path / "colour").iterdir()))

    assert get(orthanc, "/studies") == [study] and len(get(orthanc, "/patients")) == 1
    after = series_of_study(orthanc, study)
    assert [s["SeriesNumber"] for s in after] == [3, 4, 5]
    assert [s["Modality"] for s in after] == ["CT", "CT", "OT"]
    assert all(s["instances"] == 12 for s in after)
    patient = get(orthanc, f"/studies/{study}")["PatientMainDicomTags"]
    assert (patient["PatientID"], patient["PatientName"]) == (ct["PatientID"], ct["PatientName"])
    assert get(orthanc, f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"] == ct["StudyInstanceUID"]
    for series in after:
        assert frame_of_reference(orthanc, series["id"]) == ct["FrameOfReferenceUID"]
    reference = read_image(tmp_path / "ct")
    for series in after[1:]:
        back = download_series(orthanc, series["id"], tmp_path / "from_orthanc" / str(series["SeriesNumber"]))
        assert grid_difference_mm(back, reference) < 1e-3
        np.testing.assert_allclose(back.GetDirection(), reference.GetDirection(), atol=1e-5)
    colour = read_image(tmp_path / "from_orthanc" / "5")
    assert colour.GetNumberOfComponentsPerPixel() == 3


def _shown(series: dict) -> dict:
    return {key: series[key] for key in ("SeriesNumber", "Modality", "SeriesDescription", "instances")}


def _figure(path: Path) -> None:
    """Run the round trip against a fresh Orthanc, print it, and draw the CT beside the fused series
    (grey and colour) as downloaded from Orthanc, middle slice."""
    from PIL import Image

    from MedFusionLib.io import read_image

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        ct = fuse_into_dicom(work)
        with orthanc_server(work / "orthanc") as url:
            store(url, sorted((work / "ct").iterdir()))
            (study,) = get(url, "/studies")
            print("before:", json.dumps([_shown(s) for s in series_of_study(url, study)]))
            store(url, sorted((work / "fused").iterdir()) + sorted((work / "colour").iterdir()))
            after = series_of_study(url, study)
            print("after: ", json.dumps([_shown(s) for s in after]))
            reference = read_image(work / "ct")
            images = [reference]
            for series in after[1:]:
                back = download_series(url, series["id"], work / "back" / str(series["SeriesNumber"]))
                same_frame = frame_of_reference(url, series["id"]) == ct["FrameOfReferenceUID"]
                print(f"series {series['SeriesNumber']}: in the CT's study {series['ParentStudy'] == study}, CT's "
                      f"frame of reference {same_frame}, size {back.GetSize()}, largest corner distance to the CT "
                      f"grid {grid_difference_mm(back, reference):.2e} mm")  # fmt: skip
                images.append(back)
    middle = reference.GetSize()[2] // 2
    panels = []
    for image in images:
        array = sitk.GetArrayFromImage(image)[middle].astype(np.float32)
        if array.ndim == 2:
            low, high = (-160, 240) if image is reference else (array.min(), array.max())
            array = np.repeat(((np.clip(array, low, high) - low) / (high - low) * 255)[..., None], 3, axis=-1)
        panels.append(np.kron(array, np.ones((4, 4, 1))).astype(np.uint8))  # 4x, nearest neighbour
    gap = np.full((panels[0].shape[0], 8, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)).save(path)
    print(f"wrote {path}: CT (window -160..240 HU) | fused grey | fused colour, slice {middle}, read back from Orthanc")


if __name__ == "__main__":
    if ORTHANC is None:
        sys.exit("Orthanc is not installed (Debian: apt-get install orthanc)")
    os.environ.setdefault("MEDFUSION_QUIET", "1")
    _figure(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/dicom_orthanc_roundtrip.png"))
