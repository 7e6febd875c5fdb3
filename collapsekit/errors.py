"""User-facing errors: one exception type whose message is a complete one-line explanation."""


class CollapsekitError(Exception):
    """Bad input or an unusable artefact; the CLI prints the message alone and exits 2."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of `exc`'s message (at most `limit` characters), or its type's name when it has none.

    What a one-line error quotes of a library's exception: tracebacks and
    multi-line dumps from torch or safetensors would break the one line.
    """
    text = str(exc).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__
