"""The one exception type for user mistakes: the CLI turns it into a one-line error, exit 2."""


class SeedError(Exception):
    """Bad input or a refused request; the message is shown to the user as is."""
