import sys

from normfield.cli import main

sys.exit(main())
