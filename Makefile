# The two commands (README): `make demo` and `make test`. Both create .venv when missing.
#
# DDS stays on this machine and lossless: shared-memory transport only (no UDP, no
# multicast off the box) and a ROS domain of our own per run.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.refinenet_ros-installed

export FASTDDS_BUILTIN_TRANSPORTS := SHM?max_msg_size=8MB&sockets_size=64MB
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp
# One domain per make invocation (derived from its PID), unless the caller picked one.
ROS_DOMAIN_ID ?= $(shell echo $$(( $$$$ % 100 + 100 )))
export ROS_DOMAIN_ID
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast lint typecheck unit venv clean

venv: $(STAMP)

# With a sourced system ROS 2 whose rclpy imports, the venv sees system packages and we
# install no ros-* wheels over it; otherwise the Kilted wheels from PyPI provide rclpy.
# torch is installed first and pinned: unpinned, pip would pull a multi-GB CUDA build.
$(STAMP): setup.py setup.cfg
	@set -e; \
	if [ -n "$$ROS_DISTRO" ] && python3 -c 'import rclpy' 2>/dev/null; then \
	  echo "[venv] system ROS 2 $$ROS_DISTRO detected: using its rclpy, no ros-* wheels"; \
	  [ -x $(PY) ] || python3 -m venv --system-site-packages $(VENV); extras=dev; \
	else \
	  echo "[venv] no system ROS 2: installing the ROS 2 Kilted wheels from PyPI"; \
	  [ -x $(PY) ] || python3 -m venv $(VENV); extras=dev,ros; \
	fi; \
	$(PIP) install -q --upgrade pip; \
	$(PY) -c 'import torch' 2>/dev/null || $(PIP) install -q $(TORCH_PIN); \
	$(PIP) install -q -e ".[$$extras]"; \
	$(PIP) install -q --no-deps tensorrt-stubs==10.13.0.35.1; \
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

typecheck: $(STAMP)
	$(VENV)/bin/mypy refinenet_ros
	$(VENV)/bin/pyright refinenet_ros/backends/tensorrt.py

unit: $(STAMP)
	$(PY) -m pytest -q -rs

test: lint typecheck unit

# A developer's minute: the unit tests without ROS processes and without the slow ones
# (training, Ray); `make test` stays the full suite (README, CI).
test-fast: $(STAMP)
	$(PY) -m pytest -q -rs -m "not slow and not ros"

clean:
	rm -rf demo_out .pytest_cache .mypy_cache .ruff_cache
