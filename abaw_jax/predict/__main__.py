"""`python -m abaw_jax.predict`: see `abaw_jax.predict`."""

import sys

from abaw_jax.predict.cli import main

sys.exit(main())
