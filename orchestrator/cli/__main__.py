"""`python -m orchestrator.cli`: the same as the `bert-pretrain` command."""

import sys

from orchestrator.cli import main

sys.exit(main())
