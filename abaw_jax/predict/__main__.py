"""`python -m abaw_jax.predict`: see `abaw_jax.predict`."""

import sys

from abaw_jax.predict.cli import main

if __name__ == "__main__":
    sys.exit(main())
