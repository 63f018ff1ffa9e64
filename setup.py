"""ament_python package that also installs with plain pip.

colcon builds it like any ament_python package (data files below go to
share/refinenet_ros, executables to lib/refinenet_ros); `pip install -e .[dev,ros]`
gives the same console scripts in a virtualenv, with the ROS 2 Kilted wheels from PyPI
when no system ROS is present (the Makefile decides).
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "refinenet_ros"

# Ranges; the exact versions the test suite runs against are in constraints.txt (the
# Makefile installs with it: pip install -c constraints.txt -e '.[dev,ros]').
ROS_WHEELS = [
    "ros-rclpy>=9.1.2,<10",
    "ros-sensor-msgs>=5.5.1,<6",
    "ros-std-msgs>=5.5.1,<6",
    "ros-diagnostic-msgs>=5.5.1,<6",
    "ros-lifecycle-msgs>=2.3.0,<3",
    "ros-rmw-fastrtps-cpp>=9.3.3,<10",
]
DEV = [
    "pytest>=9.2",
    "pytest-timeout>=2.4",
    "ruff>=0.17",
    "mypy>=2.4",
    "pyright>=1.1",
    "scikit-image>=0.26",
    "tflite>=2.18",
    # the TFLite interpreter: the reference the ImageNet conversion is tested against
    "ai-edge-litert>=2.3",
    "ray>=2.60",  # = the fleet extra: test/test_fleet.py runs an embedded local Ray
    "openvino>=2026.4",  # = the openvino extra: test/test_openvino.py runs the backend
]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="RefineNet semantic segmentation for ROS 2 (TensorRT / ONNX Runtime / PyTorch)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(exclude=["test", "test.*"]),
    # The bundled trained weights (fp16, < 10 MB) install with the code: pip and colcon alike.
    package_data={"refinenet_ros.weights": ["*.pt"], "refinenet_ros": ["label_maps/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml") + glob("config/*.rviz")),
        (f"share/{PACKAGE}/engines", ["engines/README.md"]),
    ],
    install_requires=[
        # torch: the Makefile installs the CPU build first (PyTorch's CPU index); a robot
        # keeps its own (JetPack / CUDA) build.
        "torch>=2.1",
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "pillow>=10",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "onnxscript>=0.2",
        "rosbags>=0.10",
        "tqdm>=4.66",
        "PyYAML>=6",
    ],
    extras_require={
        "ros": ROS_WHEELS,
        "dev": DEV,
        "samples": ["scikit-image>=0.26"],
        # ImageNet initialisation of the MobileNetV2 encoder from TensorFlow's TFLite model.
        "imagenet": ["tflite>=2.18"],
        # Intel's CPU/iGPU/NPU runtime: bf16 on AVX-512-BF16/AMX, int8 on VNNI/AMX (--backend openvino).
        "openvino": ["openvino>=2026.4"],
        # `refinenet-ros fleet`: many bags on a Ray cluster (or an embedded local Ray).
        "fleet": ["ray>=2.60"],
        # `refinenet-ros label --teacher model.tflite`: Google's LiteRT interpreter.
        "teacher": ["ai-edge-litert>=2.3"],
    },
    zip_safe=False,  # the bundled weights are opened as files
    entry_points={
        "console_scripts": [
            "refinenet-ros = refinenet_ros.cli:main",
            "segmentation_node = refinenet_ros.ros.main:main",
        ],
    },
)
