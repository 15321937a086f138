"""One module per ``streamem`` sub-command; see :mod:`streamem.cli`."""
