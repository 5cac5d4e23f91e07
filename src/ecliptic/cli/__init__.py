"""The ``ecliptic`` command: thin — parse, call a package, print."""
