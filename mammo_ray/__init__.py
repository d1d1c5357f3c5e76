"""mammo-ray: mammography transfer-learning studies as batch jobs on Ray."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mammo-ray")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
