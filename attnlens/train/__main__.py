"""``python -m attnlens.train``: the command of :func:`attnlens.tasks.training.main` (see there)."""
import sys

from ..tasks.training import main

if __name__ == "__main__":
    sys.exit(main())
