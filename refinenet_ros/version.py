"""The package version, importable by any module without importing the package's facade
(``refinenet_ros.load`` sits above everything else)."""

__version__ = "0.1.0"
