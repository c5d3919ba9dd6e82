import sys

from fastdrop.cli import main

sys.exit(main())
