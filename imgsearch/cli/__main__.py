"""``python -m imgsearch.cli``: the ``imgsearch`` command, as ``imgsearch up`` starts its children."""

import sys

from imgsearch.cli import main

sys.exit(main())
