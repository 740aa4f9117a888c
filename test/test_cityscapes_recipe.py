"""The real-road recipe on fixture trees in the real layouts (Cityscapes leftImg8bit / gtFine, COCO cut-outs in
Meta-OOD's layout, a SMIYC track): train-teacher -> distill -> fit-outlier-head -> calibrate -> evaluate -> export
with training/configs/cityscapes.yaml shrunk by overrides; pasted outlier objects; ImageNet weights from a file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from real_fixtures import make_cityscapes, make_coco_outliers, make_smiyc  # noqa: E402

from dicnet_ros.cli import main as dicnet  # noqa: E402
from dicnet_ros.data import open_dataset  # noqa: E402
from dicnet_ros.data.outlier_objects import OutlierObjects, PastedObjects  # noqa: E402
from dicnet_ros.model.backbones import build_backbone  # noqa: E402
from dicnet_ros.model.checkpoint import load_checkpoint  # noqa: E402

TINY = [  # the paper's networks shrunk to seconds on a CPU; everything else is cityscapes.yaml's
    "model.teacher_backbone=resnet18", "model.feature_channels=16", "model.teacher_ppm_channels=4",
    "model.student_backbone=resnet_lite", "model.student_widths=[8,8,8,16]", "model.student_ppm_channels=4",
    "model.student_pretrained=none", "input.height=48", "input.width=96", "amp=false",
    "distributed.sync_bn=false", "teacher.epochs=1", "teacher.batch_size=2", "teacher.val_batch_size=2",
    "teacher.workers=0", "student.epochs=1", "student.batch_size=2", "student.val_batch_size=2", "student.workers=0",
    "outlier_head.epochs=1", "outlier_head.max_images=4", "data.outlier_objects.probability=1.0",
    "calibration.mu_max_images=4", "eval.workers=0", "eval.batch_size=1", "data.max_images.train=4",
]


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("real_road")
    make_cityscapes(root / "cityscapes")
    make_coco_outliers(root / "coco")
    make_smiyc(root / "smiyc", "anomaly", size=(64, 128))
    weights = root / "resnet18-imagenet.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    return {"cityscapes": root / "cityscapes", "coco": root / "coco", "smiyc": root / "smiyc", "weights": weights}


def test_cityscapes_chain(trees: dict[str, Path], tmp_path: Path) -> None:
    common = ["--config", "cityscapes", "--no-progress", "--device", "cpu", "--override",
              f"data.root={trees['cityscapes']}", f"data.outlier_objects.root={trees['coco']}", *TINY]
    teacher, student, headed, model = (tmp_path / "teacher", tmp_path / "student", tmp_path / "headed.pt",
                                       tmp_path / "model.pt")
    assert dicnet(["train-teacher", *common, "--out", str(teacher), "--pretrained", str(trees["weights"])]) == 0
    ckpt = load_checkpoint(teacher / "best.pt")
    meta = ckpt["metadata"]
    assert meta["class_names"][13] == "car" and len(meta["class_names"]) == 19
    assert meta["training"]["config"]["model"]["teacher_pretrained"] == str(trees["weights"])
    assert dicnet(["distill", *common, "--teacher", str(teacher / "best.pt"), "--out", str(student)]) == 0
    # the student trained with the pasted objects as outlier proxies (their label id is in the stored spec)
    assert load_checkpoint(student / "best.pt")["metadata"]["training"]["dataset"]["outlier_proxy_ids"] == [254]
    assert dicnet(["fit-outlier-head", *common, "--checkpoint", str(student / "best.pt"), "--out", str(headed)]) == 0
    cells = load_checkpoint(headed)["metadata"]["training"]["outlier_head"]["cells"]
    assert cells["outlier"] > 0 and cells["normal"] > 0
    assert dicnet(["calibrate", "--checkpoint", str(headed), "--out", str(model), "--no-progress",
                   "--device", "cpu"]) == 0
    report_dir = tmp_path / "eval"
    assert dicnet(["evaluate", "--checkpoint", str(model), "--data", str(trees["smiyc"]), "--out", str(report_dir),
                   "--no-progress", "--device", "cpu"]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert report["info"]["track"] == "anomaly" and report["info"]["num_images"] == 2
    published = report["benchmark"]["dicnet_paper"]
    assert published["pixel"]["auroc"] is not None and published["components"]["num_frames"] == 2
    onnx = tmp_path / "model.onnx"
    assert dicnet(["export", "--checkpoint", str(model), "--out", str(onnx), "--dynamic"]) == 0
    assert dicnet(["evaluate", "--model", str(onnx), "--data", str(trees["smiyc"]), "--out", str(tmp_path / "e2"),
                   "--no-progress"]) == 0
    exported = json.loads((tmp_path / "e2" / "report.json").read_text())["benchmark"]["dicnet"]["pixel"]
    assert exported["auroc"] == pytest.approx(published["pixel"]["auroc"], abs=1e-3)


def test_pasted_objects_are_labelled_proxies_and_reproducible(trees: dict[str, Path]) -> None:
    base = open_dataset(trees["cityscapes"], "train")
    objects = OutlierObjects(trees["coco"])
    assert len(objects) == 2  # the third cut-out image has no object pixel: never drawn
    pasted = PastedObjects(base, objects, probability=1.0, seed=5)
    assert pasted.spec.outlier_proxy_ids == (254,) and pasted.spec.class_names == base.spec.class_names
    changed = 0
    for i in range(len(base)):
        a, b = pasted[i], pasted[i]
        np.testing.assert_array_equal(a.image, b.image)  # same (seed, epoch, index): same paste
        proxy = a.label == 254
        original = base[i]
        np.testing.assert_array_equal(a.label[~proxy], original.label[~proxy])  # nothing else relabelled
        np.testing.assert_array_equal(a.image[~proxy], original.image[~proxy])  # only object pixels copied
        changed += int(proxy.any())
    assert changed == len(base)  # probability 1: every image gets an object
    first = [pasted[i].label.copy() for i in range(len(base))]
    pasted.set_epoch(1)
    assert any(not np.array_equal(first[i], pasted[i].label) for i in range(len(base)))  # new pastes per epoch
    huge = PastedObjects(open_dataset(trees["cityscapes"], "val"), objects, 1.0, scale_range=(9.0, 9.0))
    assert all(not (huge[i].label == 254).any() for i in range(len(huge)))  # larger than the image: skipped
    with pytest.raises(FileNotFoundError, match="ood_seg_train2017"):
        OutlierObjects(trees["cityscapes"])


def test_imagenet_weights_from_a_file(trees: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    net = build_backbone("resnet18", str(trees["weights"]))
    reference = torch.load(trees["weights"], weights_only=True)
    assert torch.equal(net.layer1[0].conv1.weight, reference["layer1.0.conv1.weight"])
    wrapped = tmp_path / "wrapped.pth"  # as many training scripts save it
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.items()}}, wrapped)
    assert torch.equal(build_backbone("resnet18", str(wrapped)).stem[0].weight, reference["conv1.weight"])
    with pytest.raises(ValueError, match="not ImageNet weights of torchvision resnet34"):
        build_backbone("resnet34", str(trees["weights"]))  # resnet18 file, resnet34 network
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    for weights, message in ((tmp_path / "junk.pth", "not a PyTorch weights file"),
                             (tmp_path / "missing.pth", "weights file not found")):
        capsys.readouterr()
        assert dicnet(["train-teacher", "--config", "cityscapes", "--pretrained", str(weights),
                       "--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "never").exists()
