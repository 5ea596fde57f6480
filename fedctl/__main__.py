"""``python -m fedctl``."""

from fedctl.cli.app import main

if __name__ == "__main__":
    main()
