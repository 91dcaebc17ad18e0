"""`python -m lpjax.evaluate --workdir=W`: see `lpjax.evaluate.run`."""

import sys

from lpjax.evaluate.run import main

sys.exit(main())
