"""``python -m procpoold``: the same as the ``procpoold`` console script."""

from procpoold.app import main

if __name__ == "__main__":
    main()
