"""ament_python package that also installs with plain pip (pip install -e '.[ros,train,sim,bag]')."""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "dicnet_ros"
ROOT = Path(__file__).parent


def share(pattern: str) -> list[str]:
    return sorted(p for p in glob(pattern, recursive=True) if Path(p).is_file())


def share_tree(folder: str) -> list[tuple[str, list[str]]]:
    """Install ``folder`` under share/dicnet_ros keeping sub-folders (colcon / ros2 launch find them there)."""
    entries: dict[str, list[str]] = {}
    for path in share(f"{folder}/**/*"):
        entries.setdefault(str(Path("share", PACKAGE, Path(path).parent)), []).append(path)
    return sorted(entries.items())


TRAIN = ["torch==2.14.1", "torchvision==0.29.1", "tqdm>=4.60", "tensorboard>=2.14", "onnx>=1.16",
         "onnxscript>=0.2", "matplotlib>=3.7"]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="DiCNet pixel-wise anomaly segmentation for ROS 2 camera streams (TensorRT / ONNX Runtime / PyTorch)",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[*find_packages(include=[PACKAGE, f"{PACKAGE}.*"]), "dicnet_training", "dicnet_training.configs"],
    package_dir={"dicnet_training": "training"},
    package_data={"dicnet_training.configs": ["*.yaml"], PACKAGE: ["py.typed"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *share_tree("launch"),
        *share_tree("config"),
        *share_tree("rviz"),
        *share_tree("models"),
    ],
    install_requires=["numpy>=1.24", "onnxruntime>=1.17", "opencv-python-headless>=4.8", "pyyaml>=6", "tqdm>=4.60"],
    extras_require={
        "ros": ["ros-rclpy", "ros-sensor-msgs", "ros-std-msgs", "ros-std-srvs", "ros-diagnostic-msgs",
                "ros-rmw-fastrtps-cpp"],
        "train": TRAIN,
        "sim": ["pybullet>=3.2"],
        "bag": ["rosbags>=0.10", "matplotlib>=3.7", "pillow>=9"],
        "trt": ["tensorrt>=10.12"],
        # colcon test runs pytest only for a package that declares it as a test dependency (else it falls back
        # to unittest); tests that need another extra skip where it is missing
        "test": ["pytest>=7"],
        "dev": ["pytest>=7", "ruff>=0.5", "scikit-learn>=1.3", "colcon-common-extensions>=0.3"],
    },
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "dicnet = dicnet_ros.cli:main",
            "anomaly_node = dicnet_ros.node.entry:main",
        ],
    },
)
