"""`python -m collapsekit` runs the command line."""
import sys

from collapsekit.cli import main

sys.exit(main())
