import sys

from fedtune.deploy.cli import main

sys.exit(main())
