"""``python -m darkfield_nb``: the ``darkfield-nb`` command line."""

import sys

from darkfield_nb.cli import main

sys.exit(main())
