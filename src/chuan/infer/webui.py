"""`chuan serve`'s web page: a chat with the served model and live charts of training runs.

The page (`GET /`) and its files (`GET /static/NAME`) are static package data
(`chuan/infer/web/`) and hold nothing private, so they need no key; everything they show comes
from routes behind the API key: the chat from `/v1/chat/completions`, the page's settings from
`GET /v1/ui/config`, the runs from `GET /v1/runs` and `GET /v1/runs/{name}/metrics`. Every
answer of this module carries a Content-Security-Policy that allows this server only: the
page loads no CDN, font or script from elsewhere and cannot send the conversation anywhere
else.

A run is a folder under `--runs DIR`, one or two levels down (`DIR/RUN` or `DIR/GROUP/RUN`,
as `runs/cl2/pretrain`), holding the `metrics.jsonl` that training writes one JSON line at a
time. The page polls with `after=N` (the lines it already has) and gets only the new ones.
"""

from __future__ import annotations

import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.params import Depends
from fastapi.responses import HTMLResponse, JSONResponse, Response

METRICS_FILE = "metrics.jsonl"
RUN_DEPTHS = ("*", "*/*")  # DIR/RUN and DIR/GROUP/RUN
# The page's own files; nothing else under /static is served.
ASSET_TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    # Only this server: no inline script, no other host for scripts, styles, fonts, fetches.
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _error(status: int, message: str, *, code: str, param: str | None = None) -> JSONResponse:
    """An error in the API's OpenAI shape (built here: importing the server's would be a
    cycle, since the server installs these routes)."""
    detail = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return JSONResponse({"error": detail}, status_code=status)


def _asset(name: str) -> bytes:
    return resources.files("chuan.infer").joinpath("web", name).read_bytes()


def find_runs(root: Path) -> dict[str, Path]:
    """Run name -> its metrics file, for every run under `root` whose metrics file really lies
    inside `root` (a symlink out of it is left out: the API serves nothing outside)."""
    real_root = root.resolve()
    found = {}
    for pattern in RUN_DEPTHS:
        for metrics in root.glob(f"{pattern}/{METRICS_FILE}"):
            if metrics.is_file() and metrics.resolve().is_relative_to(real_root):
                found[metrics.parent.relative_to(root).as_posix()] = metrics
    return dict(sorted(found.items()))


def complete_lines(path: Path) -> list[str]:
    """The lines of `path` that end with a newline (split there only, as JSON Lines are). A
    last line without one is being written right now and is left for the next read."""
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1].decode("utf-8", errors="replace").split("\n")[:-1]


def read_records(lines: list[str], after: int) -> tuple[list[dict], list[dict]]:
    """The records of `lines` after line `after` (numbered from 1), and one problem per line
    that is not a JSON object (reported by number; it does not stop the others)."""
    records, problems = [], []
    for number, line in enumerate(lines[after:], start=after + 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            problems.append({"line": number, "message": f"not JSON: {err}"})
            continue
        if not isinstance(record, dict):
            problems.append({"line": number, "message": "not a JSON object"})
            continue
        records.append(_without_nonfinite(record))
    return records, problems


def _without_nonfinite(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with NaN and infinities (a diverging step's loss, which Python writes as `NaN`)
    as null: JSON has no such numbers, and the API answers strict JSON."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }


def _run_summary(name: str, metrics: Path) -> dict:
    stat = metrics.stat()
    return {
        "name": name,
        "lines": len(complete_lines(metrics)),
        "modified": stat.st_mtime,
        "size": stat.st_size,
    }


def _bad_run_name(name: str) -> str | None:
    """Why `name` cannot name a run, or None. Only names `find_runs` lists are ever served;
    this says why a name that tries to climb out (`..`, an absolute path, a backslash) or to go
    deeper than runs lie is not one, rather than a bare 404."""
    parts = name.split("/")
    if not 1 <= len(parts) <= len(RUN_DEPTHS):
        return f"a run name is RUN or GROUP/RUN, got {name!r}"
    if any(part in ("", ".", "..") or "\\" in part for part in parts):
        return f"{name!r} is not a run name: it must be plain folder names under the runs dir"
    return None


def _line_count(text: str | None) -> int | None:
    """`after`'s value as a line count, or None when it is not one."""
    if text is None:
        return 0
    return int(text) if text.isascii() and text.isdigit() else None


def install_web_routes(
    app: FastAPI,
    *,
    authorized: list[Depends],
    runs_dir: str | os.PathLike | None,
    model_name: str,
    grounded: bool,
) -> None:
    """Add the page, its files and the JSON routes it reads (behind `authorized`, the API's
    key check) to `app`. Without `runs_dir`, the runs routes answer 404 saying so."""
    root = None if runs_dir is None else Path(runs_dir)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return HTMLResponse(_asset("index.html"), headers=SECURITY_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in ASSET_TYPES:
            return _error(404, f"no such file: /static/{name}", code="not_found")
        return Response(_asset(name), media_type=ASSET_TYPES[name], headers=SECURITY_HEADERS)

    @app.get("/v1/ui/config", dependencies=authorized)
    async def ui_config() -> JSONResponse:
        config = {"model": model_name, "grounded": grounded, "runs": root is not None}
        return JSONResponse(config, headers=SECURITY_HEADERS)

    def no_runs() -> JSONResponse:
        return _error(
            404, "this server shows no training runs: start it with --runs DIR", code="no_runs"
        )

    # The runs routes read files: plain functions, so FastAPI runs them on its thread pool and
    # a large metrics file never holds up the event loop that streams replies.
    @app.get("/v1/runs", dependencies=authorized)
    def list_runs() -> JSONResponse:
        if root is None:
            return no_runs()
        runs = [_run_summary(name, path) for name, path in find_runs(root).items()]
        return JSONResponse({"object": "list", "data": runs}, headers=SECURITY_HEADERS)

    @app.get("/v1/runs/{name:path}/metrics", dependencies=authorized)
    def run_metrics(name: str, request: Request) -> JSONResponse:
        if root is None:
            return no_runs()
        after = _line_count(request.query_params.get("after"))
        if after is None:
            message = "after: the number of lines already read, a whole number from 0"
            return _error(400, message, code="invalid_after", param="after")
        problem = _bad_run_name(name)
        if problem is not None:
            return _error(400, problem, code="invalid_run", param="name")
        metrics = find_runs(root).get(name)
        if metrics is None:
            return _error(404, f"no run {name!r} with a {METRICS_FILE}", code="run_not_found")
        lines = complete_lines(metrics)
        # Fewer lines than the page has: the file was rewritten (a resumed run drops the
        # steps it redoes), so the page starts over from line 0.
        start = after if after <= len(lines) else 0
        records, problems = read_records(lines, start)
        body = {
            "object": "run.metrics",
            "run": name,
            "after": start,
            "lines": len(lines),
            "records": records,
            "errors": problems,
        }
        return JSONResponse(body, headers=SECURITY_HEADERS)
