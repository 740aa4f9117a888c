"""`dicnet infer` on bad input: one stderr line per problem, honest summary, argparse-style exit codes.

Uses the shipped model (ONNX Runtime on the CPU), so these run without PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicnet_ros.cli import main

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "dicnet_sim_default.onnx"


def infer(images: list[Path], out: Path, *extra: str, model: Path = SHIPPED_MODEL) -> int:
    return main(["infer", "--model", str(model), "--images", *map(str, images), "--out", str(out),
                 "--backend", "onnxruntime", "--device", "cpu", *extra])


def write_image(path: Path) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return path


@pytest.mark.parametrize("value", ["inf", "-inf", "+Infinity"])
def test_non_finite_threshold_is_a_usage_error(value: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:  # "=" form: argparse takes a bare "-inf" for an option
        infer([tmp_path / "a.png"], tmp_path / "out", f"--threshold={value}")
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""
    last_line = captured.err.strip().splitlines()[-1]
    assert last_line.startswith("dicnet infer: error: argument --threshold") and "finite" in last_line
    assert not (tmp_path / "out").exists()


def test_threshold_nan_means_the_models_threshold_like_the_node_parameter() -> None:
    from dicnet_ros.inference.infer_cli import mask_threshold

    assert mask_threshold("nan") is None
    assert mask_threshold("0.25") == 0.25


def test_unreadable_inputs_are_reported_one_line_each(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text_as_png = tmp_path / "notes.png"
    text_as_png.write_text("not an image")
    empty_png = tmp_path / "empty.png"
    empty_png.write_bytes(b"")
    missing = tmp_path / "missing.png"
    empty_folder = tmp_path / "nothing_here"
    empty_folder.mkdir()
    inputs = [text_as_png, empty_png, missing, empty_folder]

    assert infer(inputs, tmp_path / "out") == 1
    captured = capsys.readouterr()
    assert "wrote 0 result sets" in captured.out and "Traceback" not in captured.err
    problems = [line for line in captured.err.splitlines() if line.startswith("dicnet infer: ")]
    for path in inputs:
        assert sum(str(path) in line for line in problems) == 1, (path, problems)
    assert "4 input(s) could not be processed" in problems[-1]
    assert list((tmp_path / "out").iterdir()) == []


def test_no_image_at_all_fails_before_loading_the_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty_folder = tmp_path / "nothing_here"
    empty_folder.mkdir()
    missing = tmp_path / "missing.png"
    assert infer([empty_folder, missing], tmp_path / "out", model=tmp_path / "not_loaded.onnx") == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "not_loaded.onnx" not in captured.err
    assert captured.err.splitlines() == [
        f"dicnet infer: {empty_folder}: folder holds no images (.png, .jpg, .jpeg, .bmp)",
        f"dicnet infer: {missing}: no such file or folder",
        "dicnet infer: no image to process",
    ]
    assert not (tmp_path / "out").exists()


def test_partial_failure_writes_the_readable_images_and_exits_1(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    good = write_image(tmp_path / "images" / "good.png")
    (tmp_path / "images" / "bad.jpg").write_text("not an image")
    assert infer([good.parent], tmp_path / "out") == 1
    captured = capsys.readouterr()
    assert "wrote 1 result sets" in captured.out and "fp32" in captured.out  # the precision that ran
    assert "bad.jpg: not a readable image" in captured.err and "good.png" not in captured.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "good_labels.png", "good_mask.png", "good_score.npy", "good_score.png"]


def test_all_readable_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = write_image(tmp_path / "a.png")
    assert infer([image], tmp_path / "out", "--threshold", "nan") == 0
    captured = capsys.readouterr()
    assert "wrote 1 result sets" in captured.out and captured.err.count("dicnet infer:") == 0


def test_model_load_error_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert infer([write_image(tmp_path / "a.png")], tmp_path / "out", model=tmp_path / "missing.onnx") == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "missing.onnx: model file not found" in captured.err


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "exit status" in text and "nan = the model's" in text


def test_json_report_has_the_domain_score_and_verdict_per_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--json: image, domain_score, in_domain per image; a black frame is out of the shipped model's domain, a frame
    of its demo stream is in it; a JSON path that cannot be written is one line and exit 1, the maps still written."""
    import json

    import cv2

    from dicnet_ros.bag import bag_dataset_info, iter_images
    from dicnet_ros.demo import DEMO_BAG
    from dicnet_ros.resources import package_file

    bag = package_file(DEMO_BAG)
    frame = next(iter(iter_images(bag, bag_dataset_info(bag)["image_topic"]))).rgb
    street, black = tmp_path / "images" / "street.png", tmp_path / "images" / "black.png"
    street.parent.mkdir()
    assert cv2.imwrite(str(street), frame[:, :, ::-1]) and cv2.imwrite(str(black), np.zeros((216, 384, 3), np.uint8))
    assert infer([street.parent], tmp_path / "out", "--json", str(tmp_path / "domain.json")) == 0
    report = json.loads((tmp_path / "domain.json").read_text())
    assert report["domain_threshold"] > 0
    by_name = {Path(r["image"]).name: r for r in report["images"]}
    assert set(by_name) == {"street.png", "black.png"}
    assert by_name["street.png"]["in_domain"] is True and by_name["black.png"]["in_domain"] is False
    assert by_name["street.png"]["domain_score"] < report["domain_threshold"] < by_name["black.png"]["domain_score"]
    capsys.readouterr()
    assert infer([street], tmp_path / "out2", "--json", str(tmp_path / "no_such_dir" / "d.json")) == 1
    err = capsys.readouterr().err
    problems = [line for line in err.splitlines() if line.startswith("dicnet infer: ")]
    assert len(problems) == 1 and "d.json: cannot write the JSON report (No such file" in problems[0]
    assert (tmp_path / "out2" / "street_score.npy").is_file()
