"""`python -m diffmine ...` is the `diffmine` command."""
import sys

from diffmine.cli import main

sys.exit(main())
