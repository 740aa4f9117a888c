"""Data safety of the bag tools (issue 18 items 5, 8, 9, 10): --overwrite never deletes the input or a folder the
tools did not write, output names are validated as ROS validates them, SIGTERM / SIGHUP clean up like Ctrl-C, and
a broken metadata.yaml is one line naming it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("rosbags")

from bag_helpers import _err, _eval, _make, _no_leftovers, _read_topic

from dicnet_ros import bag as bagmod
from dicnet_ros.cli import main as dicnet
from dicnet_ros.demo import DEMO_BAG
from dicnet_ros.resources import package_file


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_overwrite_never_touches_the_input_bag(dataset: Path, tmp_path: Path, tiny_onnx: Path, capsys) -> None:
    """`--bag X --out X --overwrite` used to delete the input bag; an --out that holds the bag or lies inside it
    is refused the same way, and everything stays as it was."""
    holder = tmp_path / "drives"
    bag = _make(dataset, holder / "drive")
    before = _tree(tmp_path)
    capsys.readouterr()
    for out, how in ((bag, "is the input bag"), (holder, "holds the input bag"), (bag / "eval", "lies inside")):
        assert _eval(bag, out, tiny_onnx, "--overwrite") == 2
        assert how in _err(capsys), out
        assert _tree(tmp_path) == before
    assert _eval(bag, tmp_path / "eval", tiny_onnx) == 0  # the bag still reads


def test_make_bag_overwrite_replaces_only_its_own_bag(dataset: Path, tmp_path: Path, capsys) -> None:
    bag = _make(dataset, tmp_path / "drive")
    _make(dataset, bag, "--overwrite")  # its own bag: replaced
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    capsys.readouterr()
    argv = ["make-bag", "--dataset", str(dataset), "--out", str(notes), "--no-progress", "--overwrite"]
    assert dicnet(argv) == 2
    assert "not written by this tool" in _err(capsys) and (notes / "todo.txt").read_text() == "mine"
    (bag / "extra.txt").write_text("added by the user")  # a bag holding a file make-bag never writes
    assert dicnet([*argv[:4], str(bag), *argv[5:]]) == 2
    assert "not written by this tool" in _err(capsys) and (bag / "extra.txt").is_file()
    assert dicnet(["make-bag", "--dataset", str(dataset), "--out", str(dataset / "test"), "--no-progress",
                   "--overwrite"]) == 2
    assert "the dataset" in _err(capsys)


@pytest.mark.parametrize(("option", "value", "words"), [
    ("--out-bag", "../escaped", "plain name"),
    ("--out-bag", "/tmp/elsewhere_dicnet_out", "plain name"),
    ("--out-bag", "report.md", "clash"),
    ("--namespace", "../..//x y", "--namespace '/../..//x y' has '.'"),
    ("--namespace", "/a//b", "repeats /"),
    ("--namespace", "/cam/1st", "starts with a digit"),
])
def test_output_names_are_validated_before_anything_is_written(dataset: Path, tmp_path: Path, tiny_onnx: Path,
                                                               capsys, option: str, value: str, words: str) -> None:
    bag = _make(dataset, tmp_path / "drive")
    before = _tree(tmp_path)
    capsys.readouterr()
    assert _eval(bag, tmp_path / "eval", tiny_onnx, option, value) == 2
    assert words in _err(capsys)
    assert _tree(tmp_path) == before and not Path("/tmp/elsewhere_dicnet_out").exists()
    assert not (tmp_path.parent / "escaped").exists()


def test_a_valid_namespace_places_the_output_topics(dataset: Path, tmp_path: Path, tiny_onnx: Path) -> None:
    bag = _make(dataset, tmp_path / "drive")
    assert _eval(bag, tmp_path / "eval", tiny_onnx, "--namespace", "front/cam_2", "--out-bag", "scored") == 0
    assert len(_read_topic(tmp_path / "eval" / "scored", "/front/cam_2/anomaly_score")) == 4


def test_make_bag_topics_are_validated(dataset: Path, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    assert dicnet(["make-bag", "--dataset", str(dataset), "--out", str(tmp_path / "b"), "--gt-topic", "/gt mask",
                   "--no-progress"]) == 2
    assert "--gt-topic '/gt mask' has ' '" in _err(capsys) and not (tmp_path / "b").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_stop_signal_during_bag_eval_leaves_nothing(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM used to kill bag-eval with a hidden .OUT.partial-* folder left behind (SIGINT was clean)."""
    out = tmp_path / "eval"
    def as_a_terminal_starts_it() -> None:  # a runner (colcon test) may start tests with SIGINT ignored
        for each in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(each, signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "-m", "dicnet_ros.cli", "bag-eval", "--bag",
                             str(package_file(DEMO_BAG)), "--out", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_a_terminal_starts_it)
    deadline = time.monotonic() + 120
    while not any(".partial-" in p.name for p in tmp_path.iterdir()):  # stop it mid-run, with output staged
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else 128 + sig), err
    assert "nothing was written" in err.splitlines()[-1] and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    _no_leftovers(tmp_path)


@pytest.mark.parametrize(("damage", "words"), [
    ("random_bytes", "not UTF-8 text"),
    ("list_for_text", "storage_identifier must be str, got list"),
    ("topic_name_list", "topics_with_message_count entries need topic_metadata.name"),
    ("custom_data_list", "custom_data 'dicnet.gt_topic' must be text, got list"),
    ("custom_data_json_list", "custom_data 'dicnet.image_topic' must be str (JSON), got list"),
    ("not_yaml", "is not a valid rosbag2 metadata file"),
])
def test_broken_metadata_is_one_line_naming_the_file(dataset: Path, tmp_path: Path, tiny_onnx: Path, capsys,
                                                     damage: str, words: str) -> None:
    import yaml

    bag = _make(dataset, tmp_path / "drive")
    meta = bag / "metadata.yaml"
    if damage == "random_bytes":
        meta.write_bytes(os.urandom(4096).replace(b"\n", b"\xff"))
    elif damage == "not_yaml":
        meta.write_text("rosbag2_bagfile_information: [unclosed\n")
    else:
        data = yaml.safe_load(meta.read_text())
        info = data["rosbag2_bagfile_information"]
        if damage == "list_for_text":
            info["storage_identifier"] = ["sqlite3"]
        elif damage == "topic_name_list":
            info["topics_with_message_count"][0]["topic_metadata"]["name"] = ["/camera/image_raw"]
        elif damage == "custom_data_json_list":  # the text is valid, the JSON inside it is a list
            info["custom_data"]["dicnet.image_topic"] = '["/camera/image_raw"]'
        else:
            info["custom_data"]["dicnet.gt_topic"] = ["/camera/anomaly_gt"]
        meta.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert _eval(bag, tmp_path / "eval", tiny_onnx) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("dicnet bag-eval: error:")]
    assert len(lines) == 1 and str(meta) in lines[0] and words in lines[0], captured.err
    assert "Traceback" not in captured.err and not (tmp_path / "eval").exists()
    with pytest.raises(bagmod.CorruptBagError, match=r"metadata\.yaml"):
        bagmod.bag_dataset_info(bag)


def test_nohup_keeps_sighup_ignored() -> None:
    """A stop signal the process was started with ignored (nohup) stays ignored inside the bag tools."""
    from dicnet_ros.interrupts import terminate_as_exception

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with terminate_as_exception():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, previous)
