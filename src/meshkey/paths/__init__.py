"""Paths: each peer's candidate paths (relay routes, direct and punched addresses), their
evidence, and the choice of the one that carries the peer's traffic (DESIGN.md decision 12).

The sans-IO core is :class:`~meshkey.paths.manager.PathManager`; a path is a
:class:`~meshkey.paths.path.Path` and the choice is :func:`~meshkey.paths.path.choose`.
"""
