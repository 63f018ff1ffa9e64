# The two commands (README): `make demo` and `make test`. Both create .venv when missing.
#
# DDS stays on this machine and lossless: shared-memory transport only (no UDP, no
# multicast off the box) and a ROS domain of our own per run.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch's CPU build from the PyTorch index (PyPI's Linux torch is the multi-GB CUDA build);
# where that index cannot be reached (a mirror-only network) pip's own indexes are used.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
CONSTRAINTS := constraints.txt
VENDOR := ../shared/vendor
STAMP := $(VENV)/.refinenet_ros-installed

export FASTDDS_BUILTIN_TRANSPORTS := SHM?max_msg_size=8MB&sockets_size=64MB
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp
# One domain per make invocation (derived from its PID), unless the caller picked one.
ROS_DOMAIN_ID ?= $(shell echo $$(( $$$$ % 100 + 100 )))
export ROS_DOMAIN_ID
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast test-robot lint typecheck unit venv clean

venv: $(STAMP)

# With a sourced system ROS 2 whose rclpy imports, the venv sees system packages and we
# install no ros-* wheels over it; otherwise the Kilted wheels from PyPI provide rclpy.
# torch first, the CPU build; every version from constraints.txt (setup.py keeps ranges).
$(STAMP): setup.py setup.cfg $(CONSTRAINTS)
	@set -e; \
	if [ -n "$$ROS_DISTRO" ] && python3 -c 'import rclpy' 2>/dev/null; then \
	  echo "[venv] system ROS 2 $$ROS_DISTRO detected: using its rclpy, no ros-* wheels"; \
	  [ -x $(PY) ] || python3 -m venv --system-site-packages $(VENV); extras=dev; \
	else \
	  echo "[venv] no system ROS 2: installing the ROS 2 Kilted wheels from PyPI"; \
	  [ -x $(PY) ] || python3 -m venv $(VENV); extras=dev,ros; \
	fi; \
	$(PIP) install -q --upgrade pip; \
	if ! $(PY) -c 'import torch' 2>/dev/null; then \
	  torch=$$(grep '^torch==' $(CONSTRAINTS)); \
	  $(PIP) install -q --index-url $(TORCH_INDEX) --timeout 10 --retries 0 "$$torch" 2>/dev/null \
	  || { echo "[venv] no $$torch from $(TORCH_INDEX) (unreachable?): using pip's configured indexes"; \
	       $(PIP) install -q "$$torch"; }; \
	fi; \
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[$$extras]"; \
	$(PIP) install -q -c $(CONSTRAINTS) --no-deps tensorrt-stubs; \
	touch $@

# Real street photographs for the demo, from a package registry and never committed: the
# assets/bus.jpg street photo inside the ultralytics wheel (pip download --no-deps, ~1.4 MB).
# Without them the demo says so in one line and pans scikit-image's samples instead.
STREET := $(VENV)/share/refinenet_ros/street/bus.jpg
ULTRALYTICS_PIN ?= ultralytics==8.4.190
$(STREET): | $(STAMP)
	@mkdir -p $(VENV)/wheels; \
	if $(PIP) download -q --no-deps -d $(VENV)/wheels $(ULTRALYTICS_PIN) >/dev/null 2>&1; then \
	  $(PY) -c 'import glob, sys; from refinenet_ros.samples import extract_street_images; \
	    print("[venv] street photographs:", *extract_street_images(glob.glob(sys.argv[1])[0]))' \
	    '$(VENV)/wheels/ultralytics-*.whl'; \
	else echo "[venv] could not download $(ULTRALYTICS_PIN): the demo will use scikit-image's samples"; fi

# The node end to end (~40 s on 2 cores): segmentation_node running the bundled CamVid street
# model + a player panning real street photographs (640x480, 5 Hz) like a camera + a
# recorder writing demo_out/ (PNGs, mcap bag, summary).
demo: $(STAMP) $(STREET)
	$(VENV)/bin/refinenet-ros demo --out demo_out

lint: $(STAMP)
	$(VENV)/bin/ruff check refinenet_ros test launch
	$(VENV)/bin/ruff format --check refinenet_ros test launch

# refinenet_ros/ros is also checked against the Humble and Jazzy rclpy sources (pyright;
# test/rclpy_api/*.json) where ../shared/vendor holds them; Kilted is the rclpy the tests run.
# mypy: strict for the segmenter, backends, node and weights (pyproject.toml); the tests at
# the project's default level.
typecheck: $(STAMP)
	$(VENV)/bin/mypy refinenet_ros
	$(VENV)/bin/mypy test
	$(VENV)/bin/pyright refinenet_ros/backends/tensorrt.py
	@if [ -d $(VENDOR)/rclpy-api ]; then \
	  for distro in humble jazzy; do \
	    echo "[typecheck] refinenet_ros/ros against the rclpy of $$distro"; \
	    $(VENV)/bin/pyright -p test/rclpy_api/$$distro.json || exit 1; \
	  done; \
	else echo "[typecheck] skipped the Humble/Jazzy rclpy check: $(VENDOR)/rclpy-api is absent"; fi

unit: $(STAMP)
	$(PY) -m pytest -q -rs -m "not robot"

test: lint typecheck unit test-robot

# The robot path for real (about 3 min on 2 cores; the first run also builds the workspace, a
# minute or so): a colcon workspace of this checkout and the upstream launch/ros2cli sources in
# ../shared/vendor/ros2 over the venv, then `ros2 launch`, `ros2 param`, `ros2 run` against
# the node (test/test_robot.py). Skipped, with the reason, where those sources are absent.
test-robot: $(STAMP)
	@if [ ! -d $(VENDOR)/ros2/src ]; then \
	  echo "[test-robot] skipped: $(VENDOR)/ros2 (upstream launch and ros2cli sources) is absent"; exit 0; fi; \
	ws=$$(test/robot/workspace.sh $(VENV) $(VENDOR)/ros2) && \
	REFINENET_ROS_ROBOT_WS=$$ws $(PY) -m pytest -q -rs -m robot -p no:cacheprovider test/test_robot.py

# A developer's minute: the unit tests without ROS processes and without the slow ones
# (training, Ray); `make test` stays the full suite (README, CI).
test-fast: $(STAMP)
	$(PY) -m pytest -q -rs -m "not slow and not ros"

clean:
	rm -rf demo_out .pytest_cache .mypy_cache .ruff_cache
