"""`python -m eef_tasks.pipeline PHASE --db DB --run RUN --iteration N`: one phase in this process."""

import sys

from eef_tasks.pipeline.process import main

sys.exit(main())
