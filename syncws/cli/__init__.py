"""``python -m syncws``: the command line, ``--workers`` and ``--reload``.

The top layer: may import everything else.  ``syncws.cli.main`` is the entry
point (also the ``syncws`` console script).
"""
