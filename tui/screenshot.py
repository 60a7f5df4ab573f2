"""Where the command palette's "Screenshot" saves, and what it says about it.

Textual saves to the user's downloads directory, which most servers and edge boxes lack
(no ``~/Downloads``): the save failed with "Failed to save screenshot" and no reason.
"""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_downloads_path  # what Textual itself uses for the default


def screenshot_directory() -> Path:
    """The user's downloads directory if it exists, else the working directory."""
    downloads = user_downloads_path()
    return downloads if downloads.is_dir() else Path.cwd()


def saved_text(path: Path | None) -> str:
    """The notification for a saved screenshot."""
    return f"Screenshot saved to {path}" if path else "Screenshot saved"


def failed_text(exception: BaseException) -> str:
    """The notification for a screenshot that could not be saved: what went wrong (an
    OSError names the file)."""
    return f"Screenshot not saved: {exception}"
