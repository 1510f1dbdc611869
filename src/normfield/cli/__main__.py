"""``python -m normfield.cli``: the ``normfield`` command.

The guard matters: pool and Dask workers are spawned and import the main module
again (as ``__mp_main__``); they must not run the command a second time.
"""

import sys

from normfield.cli import main

if __name__ == "__main__":
    sys.exit(main())
