"""User-facing errors: one exception type whose message is a complete one-line explanation."""


class CollapsekitError(Exception):
    """Bad input or an unusable artefact; the CLI prints the message alone and exits 2."""
