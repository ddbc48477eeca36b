"""The `flip` command line, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import write_recipe


def flip(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flip.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_help_lists_every_command():
    result = flip("--help")
    assert result.returncode == 0
    for command in ("run", "validate", "show", "ls", "data"):
        assert any(line.strip().startswith(command + " ") for line in result.stdout.splitlines()), command


def test_ls_lists_recipes_with_description():
    result = flip("ls")
    assert result.returncode == 0
    assert "dicom_synthetic_local (default)" in result.stdout
    assert "Lesion classifier" in result.stdout


def test_validate_ok():
    result = flip("validate", "dicom_synthetic_local", "seed=3")
    assert result.returncode == 0, result.stderr
    assert "valid: dicom_synthetic_local.yaml" in result.stdout


def test_validate_reports_every_problem_on_stderr_with_exit_2(tmp_path):
    recipe = write_recipe(tmp_path, "# Bad.\n# flip run bad\ndefaults:\n  - flip\n  - _self_\ntrainer:\n  max_epochs: many\n", "bad")
    result = flip("validate", str(recipe), "data.roott=/x", "model.optimizer._target_=builtins.eval")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "flip: invalid config (bad.yaml): 3 problem(s)",
        "  - data.roott: unknown key (did you mean 'root'?) (override 'data.roott=/x')",
        "  - trainer.max_epochs: expected an int, got 'many'",
        "  - model.optimizer._target_: 'builtins.eval' is not an allowed optimizer (allowed: a class in torch.optim, "
        "and what the builder lists in its own allowed_targets) (rule: allow-list)",
    ]
    assert "Traceback" not in result.stderr


def test_unknown_recipe_is_a_short_error():
    result = flip("run", "no_such_recipe")
    assert result.returncode == 1
    assert result.stderr.startswith("flip: unknown recipe 'no_such_recipe'")
    assert "Traceback" not in result.stderr


def test_show_prints_resolved_yaml():
    result = flip("show", "dicom_synthetic_local", "seed=5", "data.batch_size=16")
    assert result.returncode == 0, result.stderr
    assert "seed: 5" in result.stdout
    assert "  seed: 5" in result.stdout  # data.seed: ${seed}, resolved
    assert "batch_size: 16" in result.stdout
    assert "${" not in result.stdout


def test_debug_shows_the_trace():
    result = flip("--debug", "validate", "seed=x")
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_data_synth_writes_real_dicom_deterministically(tmp_path):
    import pydicom

    outputs = []
    for name in ("a", "b"):
        result = flip("data", "synth", "--out", str(tmp_path / name), "--sites", "2", "--images-per-site", "12",
                      "--image-size", "32", "--seed", "5")
        assert result.returncode == 0, result.stderr
        outputs.append(sorted(p for p in (tmp_path / name).rglob("*.dcm")))
    first, second = outputs
    assert len(first) == len(second) > 0
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    ds = pydicom.dcmread(first[0])
    assert ds.Modality and ds.pixel_array.shape == (32, 32) and ds.SOPInstanceUID.is_valid
    assert (tmp_path / "a" / "site-2" / "labels.csv").is_file()


def test_data_inspect_reports_every_site_and_every_skipped_file_as_json(tmp_path):
    import json
    import shutil

    from pydicom.data import get_testdata_file

    from flip.data.synthetic.dataset import write_synthetic_dicom

    root = write_synthetic_dicom(tmp_path / "data", num_sites=2, images_per_site=12, image_size=32, seed=3)
    (root / "site-2" / "dicom" / "broken.dcm").write_bytes(b"not a dicom file at all")
    shutil.copy(get_testdata_file("MR_small.dcm", download=False), root / "site-2" / "dicom" / "stranger.dcm")
    result = flip("data", "inspect", "dicom_synthetic_fedavg", f"data.root={root}", "federation.num_sites=2",
                  "federation.server_eval_site=null", "data.min_samples=1", "--json")
    assert result.returncode == 0, result.stderr
    sites = json.loads(result.stdout)["sites"]
    assert [site["site"] for site in sites] == ["site-1", "site-2"]
    site2 = sites[1]
    assert site2["found"] == site2["usable"] + len(site2["skipped"]) + site2["unlabelled"]
    assert sum(site2["labels"].values()) == site2["usable"] > 0
    reasons = {item["path"]: item["reason"] for item in site2["skipped"]}
    assert reasons["dicom/broken.dcm"] == "not a DICOM file"
    assert reasons["dicom/stranger.dcm"].startswith("no label for SOPInstanceUID")


def test_data_inspect_without_labels_counts_unlabelled_items(tmp_path):
    import json
    import shutil

    from pydicom.data import get_testdata_file

    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(get_testdata_file(name, download=False), tmp_path / name)
    result = flip("data", "inspect", "dicom_synthetic_local", "data=dicom", f"data.root={tmp_path}", "data.labels=null",
                  "data.image_size=32", "--no-labels", "--json")
    assert result.returncode == 0, result.stderr
    (site,) = json.loads(result.stdout)["sites"]
    assert (site["found"], site["usable"], site["unlabelled"], site["skipped"]) == (2, 0, 2, [])
    assert site["modalities"] == {"CT": 1, "MR": 1}


def _real_dicom_folder(folder):
    import shutil

    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(get_testdata_file(name, download=False), folder / name)
    return folder


def test_expected_data_mistakes_are_one_line_naming_the_fix(tmp_path):
    from flip.data.synthetic.dataset import write_synthetic_dicom

    dicom = _real_dicom_folder(tmp_path / "films")
    result = flip("data", "inspect", "dicom_synthetic_local", "data=dicom", f"data.root={dicom}", "data.image_size=32")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"flip: labels CSV not found: {dicom}/labels.csv (data.labels='labels.csv')")
    assert "--no-labels" in line

    export = write_synthetic_dicom(tmp_path / "synthetic", num_sites=1, images_per_site=8, image_size=16, seed=1) / "site-1" / "fhir"
    result = flip("data", "inspect", "fhir_synthetic_local", f"data.root={export}", "data.site=null")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        f"flip: FHIR folder not found: {export}/fhir (data.fhir_dir='fhir'); the site folder itself holds the "
        "export's files: set data.fhir_dir=."
    )
    assert flip("data", "inspect", "fhir_synthetic_local", f"data.root={export}", "data.site=null", "data.fhir_dir=.",
                "data.min_samples=1").returncode == 0


def test_without_labels_a_missing_labels_csv_is_not_an_item(tmp_path):
    import json

    dicom = _real_dicom_folder(tmp_path / "films")
    result = flip("data", "inspect", "dicom_synthetic_local", "data=dicom", f"data.root={dicom}", "data.image_size=32",
                  "--no-labels", "--json")
    assert result.returncode == 0, result.stderr
    (site,) = json.loads(result.stdout)["sites"]
    assert (site["found"], site["unlabelled"], site["skipped"]) == (2, 2, [])
