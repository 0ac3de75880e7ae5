"""``medfusion batch``: a cohort with broken cases, the report, sharding and verified resume."""

from __future__ import annotations

import csv

import pytest
import SimpleITK as sitk

from MedFusionLib.cli import main
from MedFusionLib.core.errors import InputError
from MedFusionLib.fusion.batch import completion_record_path, parse_shard, read_manifest, select_shard
from MedFusionLib.io import write_image


@pytest.fixture()
def cohort(phantom_pair, tmp_path):
    """A manifest of 6 cases: 4 good, one missing file, one with mismatched grids."""
    data = tmp_path / "data"
    write_image(phantom_pair.ct, data / "ct.nii.gz")
    write_image(phantom_pair.mr, data / "mr.nii.gz")
    shifted = sitk.Image(phantom_pair.mr)
    shifted.SetOrigin([o + 7.0 for o in shifted.GetOrigin()])
    write_image(shifted, data / "mr_shifted.nii.gz")
    rows = [
        ("data/ct.nii.gz", "data/mr.nii.gz", "a.nii.gz"),
        ("data/ct.nii.gz", "data/missing.nii.gz", "b.nii.gz"),
        ("data/ct.nii.gz", "data/mr.nii.gz", "c.nrrd"),
        ("data/ct.nii.gz", "data/mr_shifted.nii.gz", "d.nii.gz"),
        ("data/mr.nii.gz", "data/ct.nii.gz", "e.mha"),
        ("data/ct.nii.gz", "data/mr.nii.gz", ""),
    ]
    manifest = tmp_path / "cases.csv"
    with open(manifest, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["reference", "moving", "output"])
        writer.writerows(rows)
    return manifest


def _report(path):
    with open(path, newline="") as stream:
        return {int(row["case"]): row for row in csv.DictReader(stream)}


def test_batch_records_failures_and_goes_on_then_resumes_without_redoing(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    # --registration none: case 4's grid mismatch must fail (the default would register it).
    assert main(["batch", str(cohort), "--out", str(out), "--model", "average", "--registration", "none"]) == 1
    report = _report(out / "batch_report.csv")
    assert [report[i]["status"] for i in range(1, 7)] == ["done", "failed", "done", "failed", "done", "done"]
    assert "no such file" in report[2]["error"] and "different voxel grids" in report[4]["error"]
    assert not (out / "b.nii.gz").exists() and not (out / "d.nii.gz").exists()
    assert (out / "00006_ct_fused.nii.gz").is_file()
    assert "4 done, 0 skipped, 2 failed" in capsys.readouterr().out

    first_bytes = (out / "a.nii.gz").read_bytes()
    (out / "c.nrrd").write_bytes(b"truncated by a crash")  # present but not the completed output
    assert (
        main(["batch", str(cohort), "--out", str(out), "--model", "average", "--registration", "none", "--resume"]) == 1
    )
    report = _report(out / "batch_report.csv")
    assert [report[i]["status"] for i in range(1, 7)] == ["skipped", "failed", "done", "failed", "skipped", "skipped"]
    assert (out / "a.nii.gz").read_bytes() == first_bytes
    assert sitk.ReadImage(str(out / "c.nrrd")).GetSize() == (48, 56, 40)

    # Other options invalidate the completion records: everything is fused again.
    assert main(["batch", str(cohort), "--out", str(out), "--model", "maximum", "--resume"]) == 1
    assert [r["status"] for r in _report(out / "batch_report.csv").values()].count("skipped") == 0


def test_shards_partition_the_cohort(cohort, tmp_path):
    cases = read_manifest(cohort, tmp_path / "out")
    shards = [select_shard(cases, k, 4) for k in range(1, 5)]
    assert sorted(case.index for shard in shards for case in shard) == [case.index for case in cases]
    assert [case.index for case in shards[1]] == [2, 6]
    assert parse_shard("3/8") == (3, 8)
    for bad in ("0/4", "5/4", "x/4", "3"):
        with pytest.raises(InputError, match="shard"):
            parse_shard(bad)


def test_shard_run_writes_its_own_report(cohort, tmp_path):
    out = tmp_path / "out"
    assert main(["batch", str(cohort), "--out", str(out), "--shard", "1/2", "--model", "average"]) == 0
    report = _report(out / "batch_report_shard1of2.csv")
    assert sorted(report) == [1, 3, 5] and all(row["status"] == "done" for row in report.values())
    assert completion_record_path(out / "a.nii.gz").is_file()


def test_manifest_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("fixed,moving\na.nii.gz,b.nii.gz\n")
    with pytest.raises(InputError, match="'reference' and 'moving'"):
        read_manifest(bad, tmp_path)
    duplicate = tmp_path / "dup.csv"
    duplicate.write_text("reference,moving,output\na,b,x.nii.gz\nc,d,x.nii.gz\n")
    with pytest.raises(InputError, match="both write"):
        read_manifest(duplicate, tmp_path)
    with pytest.raises(InputError, match="not found"):
        read_manifest(tmp_path / "nope.csv", tmp_path)


def test_parallel_workers_give_the_same_outputs_as_one(cohort, tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert main(["batch", str(cohort), "--out", str(serial), "--model", "laplacian", "--shard", "1/2"]) == 0
    assert (
        main(["batch", str(cohort), "--out", str(parallel), "--model", "laplacian", "--shard", "1/2", "--workers", "2"])
        == 0
    )
    for name in ("a.nii.gz", "c.nrrd", "e.mha"):
        assert (serial / name).read_bytes() == (parallel / name).read_bytes()


def test_batch_records_the_model_auto_resolved_to_and_resume_checks_it(cohort, tmp_path):
    """Model "auto" names a different network on another machine: the report and the completion
    record say which one fused each case, and a resume here redoes a case fused by another one."""
    import json

    from MedFusionLib.core.choices import DEFAULT_MODEL_BY_DEVICE
    from MedFusionLib.fusion.batch import run_batch
    from MedFusionLib.fusion.options import FusionOptions

    out = tmp_path / "out"
    options = FusionOptions(registration="none", device="cpu")  # model auto: the CPU's network here
    here = DEFAULT_MODEL_BY_DEVICE["cpu"]

    def writer(network):
        def write_case(case, case_options):
            assert case_options.model == "auto"
            case.output.write_bytes(b"fused")  # the runner only needs the file
            return network

        return write_case

    summary = run_batch(cohort, out, options, shard=(1, 2), write_case=writer(DEFAULT_MODEL_BY_DEVICE["cuda"]))
    report = _report(summary.report)
    assert {row["model"] for row in report.values()} == {DEFAULT_MODEL_BY_DEVICE["cuda"]}
    record = json.loads(completion_record_path(out / "a.nii.gz").read_text())
    assert record["model"] == DEFAULT_MODEL_BY_DEVICE["cuda"] and record["options"]["model"] == "auto"

    # Resumed on this CPU machine, auto picks another network: every case is fused again.
    summary = run_batch(cohort, out, options, shard=(1, 2), resume=True, write_case=writer(here))
    assert [outcome.status for outcome in summary.outcomes] == ["done"] * 3
    # Resumed again: the records name the network auto picks here, so nothing is redone.
    summary = run_batch(cohort, out, options, shard=(1, 2), resume=True, write_case=writer(here))
    report = _report(summary.report)
    assert all(row["status"] == "skipped" and row["model"] == here for row in report.values())


def test_batch_report_names_the_model_of_each_case(cohort, tmp_path):
    out = tmp_path / "out"
    assert main(["batch", str(cohort), "--out", str(out), "--shard", "2/2", "--registration", "none",
                 "--device", "cpu"]) == 1  # fmt: skip
    report = _report(out / "batch_report_shard2of2.csv")
    assert report[6]["status"] == "done" and report[6]["model"] == "emfusion"  # the default, auto, on the CPU
    assert report[2]["status"] == "failed" and report[2]["model"] == ""
