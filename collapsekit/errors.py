"""User-facing errors: one exception type whose message is a complete one-line explanation."""


class CollapsekitError(Exception):
    """Bad input or an unusable artefact; the CLI prints the message alone and exits 2."""


class TrainingDiverged(CollapsekitError):
    """A training or fine-tuning run's loss became NaN or infinite (too large a learning rate, most often).

    Its own type so that a search over many runs can rank the run that diverged
    last and go on, where a single run stops with the message."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of `exc`'s message (at most `limit` characters), or its type's name when it has none.

    What a one-line error quotes of a library's exception: tracebacks and
    multi-line dumps from torch or safetensors would break the one line.
    """
    text = str(exc).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__
