#!/usr/bin/env bash
# The colcon workspace `make test-robot` runs `ros2` from: the project (a symlink, so the
# tests see the working tree) beside the upstream launch / launch_ros / ros2cli /
# composition_interfaces / rosidl_runtime_py sources of VENDOR, built over the project's
# virtualenv (ROS 2 Kilted wheels = the underlay).
#
# usage: test/robot/workspace.sh VENV VENDOR
# Prints the workspace folder on its last line; `source <ws>/env.sh` gives the environment
# a robot has after `source install/setup.bash`. The workspace lives in a temporary folder
# named by a hash of everything the build reads (vendored sources, package.xml, setup.py,
# setup.cfg, constraints.txt, the launch/config file names), so a rerun with nothing
# changed reuses it in about a second; edits to Python, launch or config files need no
# rebuild (--symlink-install).
set -euo pipefail
VENV=$(cd "$1" && pwd)
VENDOR=$(cd "$2" && pwd)
PROJECT=$(cd "$(dirname "$0")/../.." && pwd)
PY=$VENV/bin/python
cd "$PROJECT"

# 1. colcon and the CMake/rosidl wheels composition_interfaces needs, pinned.
TOOLS_STAMP=$VENV/.refinenet_ros-robot-tools
if [ ! -f "$TOOLS_STAMP" ] || [ constraints.txt -nt "$TOOLS_STAMP" ]; then
  echo "[robot] installing colcon and the ROS 2 build wheels into $VENV (pinned in constraints.txt)" >&2
  tools=$(sed -n '/^# `make test-robot`/,$p' constraints.txt | grep -v '^#' | cut -d= -f1 | tr '\n' ' ')
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --disable-pip-version-check -c constraints.txt $tools >&2
  # The wheels' exported CMake targets name the wheel builder's Python; point them at ours.
  pyinc=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  npinc=$("$PY" -c 'import numpy; print(numpy.get_include())')
  for f in "$VENV"/share/*/cmake/export_*__rosidl_generator_pyExport.cmake; do
    sed -i -e "s#/opt/python/cp3[0-9]*-cp3[0-9]*/include/python3\.[0-9]*#$pyinc#g" \
           -e "s#/opt/python/cp3[0-9]*-cp3[0-9]*/lib/python3\.[0-9]*/site-packages/numpy/_core/include#$npinc#g" "$f"
  done
  touch "$TOOLS_STAMP"
fi

# 2. The workspace, keyed by content.
key=$(
  {
    (cd "$VENDOR" && find src -type f -print0 | sort -z | xargs -0 sha256sum)
    sha256sum package.xml setup.py setup.cfg constraints.txt test/robot/workspace.sh
    ls launch config resource engines
    echo "$VENV $PROJECT $("$PY" -V)"
  } | sha256sum | cut -c1-16
)
WS=${TMPDIR:-/tmp}/refinenet_ros-robot-ws-$key
if [ ! -f "$WS/.built" ]; then
  for old in "${TMPDIR:-/tmp}"/refinenet_ros-robot-ws-*; do  # earlier contents: stale
    [ -d "$old" ] && [ "$old" != "$WS" ] && rm -rf "$old"
  done
  rm -rf "$WS"; mkdir -p "$WS/src"
  ln -s "$PROJECT" "$WS/src/refinenet_ros"
  cp -r "$VENDOR"/src/* "$WS/src/"
  chmod -R u+w "$WS/src"
fi
cat > "$WS/env.sh" <<ENV
# The environment of a robot after \`source install/setup.bash\`: the venv's wheels are the
# underlay (their ament index and CMake configs), install/ the overlay.
source "$VENV/bin/activate"
export AMENT_PREFIX_PATH="$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV\${CMAKE_PREFIX_PATH:+:\$CMAKE_PREFIX_PATH}"
[ -f "$WS/install/setup.bash" ] && source "$WS/install/setup.bash"
export RMW_IMPLEMENTATION=\${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
ENV
if [ ! -f "$WS/.built" ]; then
  echo "[robot] colcon build in $WS (first time for these sources: about a minute)" >&2
  t0=$(date +%s)
  (
    set +u  # colcon's setup scripts read unset variables
    # shellcheck disable=SC1091
    source "$WS/env.sh"
    cd "$WS"
    PYTHONWARNINGS=ignore colcon build --base-paths src --symlink-install \
      --event-handlers console_cohesion- status- console_start_end- \
      --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$PY" > "$WS/build.log" 2>&1
  ) || { tail -40 "$WS/build.log" >&2; echo "[robot] colcon build failed: $WS/build.log" >&2; exit 1; }
  touch "$WS/.built"
  echo "[robot] built in $(( $(date +%s) - t0 )) s" >&2
else
  echo "[robot] reusing $WS (same sources)" >&2
fi
echo "$WS"
