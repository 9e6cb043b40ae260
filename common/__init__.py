"""What both services share: structured logs, the systemd journal and notify protocol, free ports.

Nothing here imports the agent, the sidecar or the model, so each of them may import it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgewatch")  # the one version source: pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
