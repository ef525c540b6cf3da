"""``python -m meshkey`` and the ``meshkey`` command.

``meshkey --version`` is answered before the command line (click and every command) is
imported: it is what scripts call to check that meshkey is there.
"""

from __future__ import annotations

import sys


def run() -> None:
    if sys.argv[1:] == ["--version"]:
        from meshkey import __version__

        print(f"meshkey {__version__}")
        return
    from meshkey.cli.main import main

    main()


if __name__ == "__main__":
    run()
