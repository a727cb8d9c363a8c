import sys

from murder_core.cli import main

sys.exit(main())
