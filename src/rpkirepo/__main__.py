import sys

from rpkirepo.cli import main

sys.exit(main())
