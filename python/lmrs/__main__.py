"""`python -m lmrs ...` (used by torchrun: `torchrun ... -m lmrs train ...`)."""

from lmrs.cli.main import main

if __name__ == "__main__":
    main()
