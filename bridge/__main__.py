"""``python -m bridge`` is the same as the ``faxbridge`` command."""

import sys

from bridge.cli import main

sys.exit(main())
