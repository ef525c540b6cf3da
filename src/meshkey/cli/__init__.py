"""The ``meshkey`` command line: talks to node daemons over their control API."""
