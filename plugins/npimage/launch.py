"""The `npimage` command's entry point: light, so that a run's workers start first.

`npimage run`'s workers are forked from a server process that loads the library once
(npimage.forkserver, ~1.3 s of CPU); a short run waits for it before its first image.
The command-line module (npimage.cli) imports NumPy, Arrow and DuckDB (~0.4 s): started
from here, before that import, the server loads on one core while this process loads on
the other, and the run's first batch starts that much sooner (docs/BENCHMARKS.md,
session 8). Every other command goes straight to npimage.cli. Each worker runs the
command's script again as its `__mp_main__` (multiprocessing's way), which now imports
only this module: nothing to load.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def command(argv: Sequence[str]) -> str | None:
    """The subcommand named in `argv` (the first word that is not an option: the top-level
    options are flags), or None when help is asked for."""
    if any(a in ("-h", "--help") for a in argv):
        return None
    return next((a for a in argv if not a.startswith("-")), None)


def main() -> int:
    """Start the workers' server for a `run`, then hand over to npimage.cli."""
    if command(sys.argv[1:]) == "run":
        from npimage import forkserver

        forkserver.start()
    from npimage.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
