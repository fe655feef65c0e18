"""The web chat page: a static HTML/JS client of the OpenAI-compatible API, served at `/` by serve and ui."""

from __future__ import annotations

import threading
import webbrowser
from pathlib import Path
from typing import Any

STATIC = Path(__file__).parent / "static"
PAGE = STATIC / "index.html"


def add_ui(app: Any, session: Any) -> None:
    """Route `/` to the chat page (it reads models and their base/adapter/round from /v1/models)."""
    from fastapi.responses import HTMLResponse

    html = PAGE.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})


def open_when_up(url: str, delay: float = 1.5) -> None:
    """Open the page in the user's browser shortly after the server starts (no-op where there is no browser)."""
    threading.Timer(delay, lambda: webbrowser.open(url)).start()
