"""collapsekit.errors: what a one-line error quotes of another library's exception."""
from collapsekit.errors import first_line


def test_first_line_quotes_one_line_within_the_limit_or_names_the_type():
    assert first_line(ValueError("  shape mismatch\nTraceback ...\n  more")) == "shape mismatch"
    assert first_line(RuntimeError("x" * 500), 300) == "x" * 300
    assert first_line(RuntimeError("x" * 500)) == "x" * 500
    assert first_line(KeyError()) == "KeyError" and first_line(OSError("  \n ")) == "OSError"
