"""How a download is handed to a browser: the Content-Disposition of every download, the
api's signed ones and S3's presigned ones alike."""

from __future__ import annotations

import urllib.parse


def attachment(filename: str) -> str:
    """The Content-Disposition of a download: saved as `filename`, never shown inline (an
    HTML or SVG artifact must not run as a page of the site that serves it). Quoted like
    Starlette's FileResponse: a plain name as is, any other in RFC 5987 form."""
    quoted = urllib.parse.quote(filename)
    if quoted != filename:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'
