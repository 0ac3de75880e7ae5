"""``python -m MedFusionLib`` runs the ``medfusion`` command."""

import sys

from MedFusionLib.cli import main

sys.exit(main())
