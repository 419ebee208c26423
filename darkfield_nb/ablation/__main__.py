"""``python -m darkfield_nb.ablation --grid GRID.yaml --out DIR`` (the same as
``darkfield-nb ablate`` once the CLI hooks it up)."""

from .runner import main

raise SystemExit(main())
