"""`python -m sharpen ...` is the `sharpen` command (also under `accelerate launch -m sharpen ...`)."""

import sys

from sharpen.cli import main

sys.exit(main())
