"""fedctl: run federated-learning experiments on SSH hosts or on this machine.

The package is a library with a thin Typer CLI on top (``fedctl.cli``). Importing it is cheap:
nothing here imports TensorFlow, paramiko or rich at import time.
"""

__version__ = "0.1.0"
#: the distribution name on PyPI (the command and the import package are `fedctl`; the PyPI name
#: `fedctl` belongs to an unrelated project): every install hint names this
DIST_NAME = "fedctl-fl"
