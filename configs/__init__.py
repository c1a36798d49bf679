"""The shipped experiment configs (YAML), installed with the package so that ``continual run NAME``
finds them wherever it runs (see :mod:`continual.config.shipped`)."""
