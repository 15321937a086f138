import sys

from streamem.cli import main

sys.exit(main())
