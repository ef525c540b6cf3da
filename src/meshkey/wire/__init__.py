"""Every on-the-wire format of meshkey, versioned, size-limited, in one place.

Parsers here raise :class:`~meshkey.wire.errors.WireError` subclasses on bad input and never
anything else. This package imports nothing else from meshkey: it is the bottom layer.
"""
