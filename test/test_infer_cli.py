"""`dicnet infer`: one stderr line per bad input, honest summary, argparse-style exit codes; a distinct result set
per input, the pixel limit read from the header, the shipped model by default or by bare name, and the outputs a
person can look at (colour labels, the node's overlay).

Uses the shipped model (ONNX Runtime on the CPU), so these run without PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicnet_ros.cli import main

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "dicnet_sim_default.onnx"
ATTACKS = Path(__file__).resolve().parent / "data" / "attacks"
RESULT_SET = ("_label_ids.png", "_labels.png", "_mask.png", "_overlay.png", "_score.npy", "_score.png")


def infer(images: list[Path], out: Path, *extra: str, model: Path | str | None = SHIPPED_MODEL) -> int:
    return main(["infer", *(["--model", str(model)] if model is not None else []), "--images", *map(str, images),
                 "--out", str(out), "--backend", "onnxruntime", "--device", "cpu", *extra])


def write_image(path: Path, seed: int = 0) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8))
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
        f"dicnet infer: {empty_folder}: folder holds no images (.png, .jpg, .jpeg, .webp)",
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
    assert "bad.jpg: no PNG, JPEG or WebP header" in captured.err and "good.png" not in captured.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["classes.json", *(f"good{s}" for s in RESULT_SET)]


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
    assert all(f"NAME{suffix}" in text for suffix in RESULT_SET)


def test_inputs_with_the_same_name_get_one_result_set_each(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Three inputs named frame.* used to report "wrote 3 result sets" and leave one."""
    images = [write_image(tmp_path / "a" / "frame.png", 1), write_image(tmp_path / "b" / "frame.png", 2),
              write_image(tmp_path / "b" / "frame.jpg", 3)]
    assert infer([*images, images[0]], tmp_path / "out") == 0  # the same file twice is one input
    assert "wrote 3 result sets" in capsys.readouterr().out
    scores = sorted((tmp_path / "out").glob("*_score.npy"))
    assert [p.name for p in scores] == ["a__frame_score.npy", "b__frame_jpg_score.npy", "b__frame_png_score.npy"]
    assert len({p.read_bytes() for p in scores}) == 3  # three different images, three different score maps


def test_pixel_limit_refuses_the_12000px_png_from_its_header(tmp_path: Path) -> None:
    """A 420 KB PNG of 12000 x 12000 pixels used to cost 5 GB of memory, 15 s and a 550 MB .npy."""
    import os
    import subprocess
    import sys
    import time

    # peak memory as the process itself sees it (VmHWM of its own address space: ru_maxrss of a child also counts
    # the pages of the process it was forked from, which in a long test run is gigabytes)
    code = ("import sys; from dicnet_ros.cli import main; rc = main(sys.argv[1:]); "
            "print('VmHWM', next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')), "
            "file=sys.stderr); sys.exit(rc)")
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", code, "infer", "--images", str(ATTACKS / "png_12000x12000.png"),
                             "--out", str(tmp_path / "out"), "--backend", "onnxruntime", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()
    assert os.waitstatus_to_exitcode(status) == 1, err
    peak_kib = int(next(line.split()[1] for line in err.splitlines() if line.startswith("VmHWM")))
    assert peak_kib < 1_000_000, err  # a decode of 12000 x 12000 pixels peaks above 5 GB
    assert usage.ru_utime + usage.ru_stime < 30 and time.monotonic() - start < 120  # decoding took 15 s of CPU
    lines = [line for line in err.splitlines() if line.startswith("dicnet infer:")]
    assert lines[0].startswith(f"dicnet infer: {ATTACKS / 'png_12000x12000.png'} (header, 419971 bytes) of "
                               "12000x12000 = 144000000 pixels exceeds the limit of 16777216")
    assert not list((tmp_path / "out").glob("*.npy"))


def test_exif_rotated_jpeg_keeps_its_stored_size(tmp_path: Path) -> None:
    assert infer([ATTACKS / "exif_rot6_64x48.jpg"], tmp_path / "out") == 0
    assert np.load(tmp_path / "out" / "exif_rot6_64x48_score.npy").shape == (48, 64)


def test_default_model_and_bare_shipped_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    """No --model: the shipped model, as `dicnet node`; a bare shipped name from any folder picks that file."""
    image = write_image(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    assert infer([image], tmp_path / "default", model=None) == 0
    assert "fp32" in capsys.readouterr().out
    assert infer([image], tmp_path / "int8", model="dicnet_sim_default_int8.onnx") == 0
    assert "int8" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(tmp_path / "default" / "a_score.npy"),
                                  np.load(_direct_run(image, tmp_path)))
    assert infer([image], tmp_path / "none", model="no_such_model.onnx") == 1
    err = capsys.readouterr().err
    assert "model file not found: no_such_model.onnx" in err and "dicnet_sim_default_int8.onnx" in err


def _direct_run(image: Path, tmp_path: Path) -> Path:
    assert infer([image], tmp_path / "explicit", model=SHIPPED_MODEL) == 0
    return tmp_path / "explicit" / "a_score.npy"


def test_outputs_a_person_can_look_at(tmp_path: Path) -> None:
    """Labels in colour (raw ids kept beside them), the node's overlay, the classes' names and colours."""


def test_json_report_has_the_domain_score_and_verdict_per_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--json: image, domain_score, in_domain per image; a black frame is out of the shipped model's domain, a frame
    of its demo stream is in it; a JSON path that cannot be written is one line and exit 1, the maps still written."""
    pytest.importorskip("rosbags")  # a frame of the shipped demo bag
    import json

    import cv2

    from dicnet_ros.inference import load_model
    from dicnet_ros.visualization import class_palette, colorize_labels, colorize_score, overlay

    image = write_image(tmp_path / "a.png")
    assert infer([image], tmp_path / "out") == 0
    model = load_model(SHIPPED_MODEL, "onnxruntime", "cpu")
    rgb = cv2.imread(str(image))[:, :, ::-1]
    result = model.infer(np.ascontiguousarray(rgb))
    read = {s: cv2.imread(str(tmp_path / "out" / f"a{s}"), cv2.IMREAD_UNCHANGED) for s in RESULT_SET if "png" in s}
    np.testing.assert_array_equal(read["_label_ids.png"], result.semantic_labels)
    palette = class_palette(model.metadata.num_classes)
    np.testing.assert_array_equal(read["_labels.png"][:, :, ::-1], colorize_labels(result.semantic_labels, palette))
    assert read["_labels.png"].ndim == 3 and read["_labels.png"].max() > 100  # colours, not near-black ids
    lo, hi = model.metadata.display_range
    np.testing.assert_array_equal(read["_overlay.png"][:, :, ::-1],
                                  overlay(rgb, result.anomaly_score, 0.5, (lo, hi),
                                          heat=colorize_score(result.anomaly_score, lo, hi)))
    classes = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert [c["name"] for c in classes] == list(model.metadata.class_names)
    assert classes[1]["rgb"] == [int(v) for v in palette[1]]
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
