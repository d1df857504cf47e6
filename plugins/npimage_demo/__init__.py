"""The demo catalogue generator: drawn packshots with planted duplicates and a truth file.

Kept outside the runtime library: it needs scikit-image (its sample photos), which the
job itself does not. Install it with the `demo` extra: pip install 'npimage[demo]'.
"""

from __future__ import annotations

from npimage.errors import MissingExtra

#: What to run to get the demo generator's dependencies.
INSTALL_HINT = "install the demo extra: pip install 'npimage[demo]'"


def require_scikit_image() -> None:
    """Refuse, in one line that says what to install, when scikit-image is missing."""
    try:
        import skimage.data  # noqa: F401
    except ImportError as exc:
        raise MissingExtra("the demo catalogue needs scikit-image, which is not installed",
                           hint=INSTALL_HINT) from exc
