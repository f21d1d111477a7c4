"""``python -m hsrl.cli ...`` (what ``accelerate launch -m hsrl.cli export`` runs): the ``hsrl`` command."""

import sys

from hsrl.cli import main

sys.exit(main())
