"""``python -m refinenet_ros`` = ``refinenet-ros`` (importing cli keeps one CliError class)."""

import sys

from refinenet_ros.cli import main

sys.exit(main())
