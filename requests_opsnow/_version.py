"""The package's version, in a module of its own so that submodules can use it
without importing the package (and setuptools can read it without importing anything)."""

__version__ = "0.1.0"
