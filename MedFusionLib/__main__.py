"""``python -m MedFusionLib`` runs the ``medfusion`` command."""

import sys

from .cli import main

sys.exit(main())
