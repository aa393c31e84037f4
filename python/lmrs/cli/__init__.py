"""The ``lmrs`` command: ``main`` (the group and its one-line errors) and one module per
group of commands, each a thin layer over the Python API."""
