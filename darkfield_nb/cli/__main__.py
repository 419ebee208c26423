"""``python -m darkfield_nb.cli``: the ``darkfield-nb`` command (what ``torchrun -m`` starts)."""

import sys

from darkfield_nb.cli import main

sys.exit(main())
