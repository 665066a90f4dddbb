import sys

from sdeid.cli import main

sys.exit(main())
