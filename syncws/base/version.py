"""The version of syncws (``syncws.__version__``)."""

__version__ = "0.1.0"
