"""reportgen: one command from a trained Keras CNN and a folder of images to a static report of what it learned."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from reportgen.api import generate_report

__all__ = ["__version__", "generate_report"]


def __getattr__(name: str) -> Any:
    # TensorFlow takes seconds to import: load the API only when it is used, so `reportgen --help` is instant.
    if name == "generate_report":
        from reportgen.api import generate_report

        return generate_report
    raise AttributeError(f"module 'reportgen' has no attribute {name!r}")
