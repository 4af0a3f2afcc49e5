"""`chuan serve`'s web page over plain HTTP (the browser test is `test_web_page.py`): the page
and its files are served without a key under a Content-Security-Policy that allows this server
only, and name no other host; the runs API behind the key lists `metrics.jsonl` files and
hands out only the complete lines after the ones the page has, and nothing outside the runs
dir."""

from __future__ import annotations

import http.client
import json
import re
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest

from chuan.infer.engine import Engine
from chuan.infer.loading import load_model, load_saved_tokenizer
from chuan.infer.sampling import generation_defaults
from chuan.infer.server import create_app
from chuan.infer.webui import ASSET_TYPES
from helpers.serving import chat_model_dir, running

KEY = "web-key"
NAME = "tiny-web"
AUTH = {"Authorization": f"Bearer {KEY}"}
SECRET = "outside the runs dir"


def record(step: int) -> dict:
    return {"step": step, "loss": 5.0 - step / 10, "lr": 3e-4, "tokens_per_s": 1000.0 + step}


def lines_of(*steps: int) -> str:
    return "".join(json.dumps(record(s)) + "\n" for s in steps)


@pytest.fixture(scope="module")
def engine(test_data, tmp_path_factory):
    model_dir = chat_model_dir(test_data, tmp_path_factory.mktemp("web"))
    model, tokenizer = load_model(model_dir, device="cpu"), load_saved_tokenizer(model_dir)
    defaults = generation_defaults(model_dir)
    with Engine(model, tokenizer, defaults=defaults, max_batch=8) as engine:
        yield engine


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """Two runs (one a level deeper, as `runs/cl2/pretrain`), a folder with no metrics, a
    metrics file too deep to be a run, and a file beside the runs dir that must stay out."""
    root = tmp_path_factory.mktemp("runs_root")
    runs = root / "runs"
    (runs / "sft").mkdir(parents=True)
    (runs / "sft" / "metrics.jsonl").write_text(lines_of(1, 2, 3))
    (runs / "cl2" / "pretrain" / "checkpoints").mkdir(parents=True)
    (runs / "cl2" / "pretrain" / "metrics.jsonl").write_text(lines_of(10, 20))
    (runs / "cl2" / "pretrain" / "checkpoints" / "metrics.jsonl").write_text(lines_of(1))
    (runs / "empty").mkdir()
    (root / "outside").mkdir()
    (root / "outside" / "metrics.jsonl").write_text(json.dumps({"step": 1, "note": SECRET}) + "\n")
    (runs / "escape").symlink_to(root / "outside")
    return runs


@pytest.fixture(scope="module")
def base_url(engine, runs_dir) -> str:
    with running(create_app(engine, model_name=NAME, api_key=KEY, runs_dir=runs_dir)) as url:
        yield url


def get(base_url: str, path: str, *, key: bool = True) -> httpx2.Response:
    return httpx2.get(f"{base_url}{path}", headers=AUTH if key else {})


def raw_get(base_url: str, path: str) -> tuple[int, str]:
    """GET `path` exactly as written, with the key."""
    connection = http.client.HTTPConnection(urlsplit(base_url).netloc, timeout=30)
    try:
        connection.request("GET", path, headers=AUTH)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def metrics(base_url: str, run: str, after: int | str = 0) -> httpx2.Response:
    return get(base_url, f"/v1/runs/{run}/metrics?after={after}")


def test_page_and_its_files_need_no_key_and_allow_only_this_server(base_url):
    page = get(base_url, "/", key=False)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, media_type in ASSET_TYPES.items():
        asset = get(base_url, f"/static/{name}", key=False)
        assert asset.status_code == 200
        assert asset.headers["content-type"] == media_type
        assert "default-src 'self'" in asset.headers["content-security-policy"]
        assert f'"/static/{name}"' in page.text  # the page loads it from this server
    missing = get(base_url, "/static/server.py", key=False)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_page_and_its_files_name_no_other_host(base_url):
    """No URL with a scheme, no protocol-relative `//host`, no CSS `url()` or `@import`:
    every file the page loads is one of its own, from `/static/`."""
    served = {name: get(base_url, f"/static/{name}", key=False).text for name in ASSET_TYPES}
    served["index.html"] = get(base_url, "/", key=False).text
    web = resources.files("chuan.infer").joinpath("web")
    for name, text in served.items():
        assert text == web.joinpath(name).read_text(encoding="utf-8")
        assert "://" not in text, name
        assert not re.search(r"""["'(]\s*//""", text), name
    assert not re.search(r"url\(|@import", served["style.css"])
    loaded = re.findall(r"""(?:src|href)="([^"]*)\"""", served["index.html"])
    assert loaded and all(path.startswith("/static/") for path in loaded)


def test_the_data_routes_need_the_key(base_url):
    for path in ("/v1/ui/config", "/v1/runs", "/v1/runs/sft/metrics"):
        refused = get(base_url, path, key=False)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["code"] == "invalid_api_key"
    config = get(base_url, "/v1/ui/config").json()
    assert config == {"model": NAME, "grounded": False, "runs": True}


def test_runs_are_the_metrics_files_one_or_two_levels_down(base_url, runs_dir):
    """(Other tests add runs of their own: only the fixture's are compared.)"""
    runs = {r["name"]: r for r in get(base_url, "/v1/runs").json()["data"]}
    assert list(runs) == sorted(runs)
    assert runs["sft"]["lines"] == 3 and runs["cl2/pretrain"]["lines"] == 2
    stat = (runs_dir / "sft" / "metrics.jsonl").stat()
    assert (runs["sft"]["modified"], runs["sft"]["size"]) == (stat.st_mtime, stat.st_size)
    # too deep, no metrics, a symlink out of the runs dir
    assert not {"cl2/pretrain/checkpoints", "cl2", "empty", "escape"} & set(runs)


def test_metrics_after_n_are_only_the_lines_after_n(base_url):
    whole = metrics(base_url, "sft").json()
    assert (whole["run"], whole["after"], whole["lines"], whole["errors"]) == ("sft", 0, 3, [])
    assert whole["records"] == [record(1), record(2), record(3)]
    rest = metrics(base_url, "sft", after=2).json()
    assert (rest["lines"], rest["records"]) == (3, [record(3)])
    assert metrics(base_url, "sft", after=3).json()["records"] == []
    deeper = metrics(base_url, "cl2/pretrain", after=1).json()
    assert deeper["records"] == [record(20)]


def test_a_rewritten_shorter_file_is_read_again_from_the_start(base_url):
    """More lines asked for than the file has: it was rewritten (a resumed run drops the steps
    it does again), so the answer starts over at line 0 and says so."""
    again = metrics(base_url, "sft", after=7).json()
    assert again["after"] == 0 and len(again["records"]) == 3


def test_a_half_written_last_line_waits_until_it_is_complete(base_url, runs_dir):
    run = runs_dir / "writing"
    run.mkdir()
    last = json.dumps(record(3)) + "\n"
    (run / "metrics.jsonl").write_text(lines_of(1, 2) + last[:9])
    partial = metrics(base_url, "writing").json()
    assert partial["lines"] == 2 and partial["records"] == [record(1), record(2)]
    assert partial["errors"] == []
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(last[9:])
    finished = metrics(base_url, "writing", after=2).json()
    assert finished["lines"] == 3 and finished["records"] == [record(3)]


def test_a_malformed_line_is_reported_by_number_and_the_rest_are_read(base_url, runs_dir):
    run = runs_dir / "broken"
    run.mkdir()
    diverged = json.dumps({"step": 4, "loss": float("nan"), "skipped": True})  # Python's NaN
    text = lines_of(1) + "not json\n" + "[1, 2]\n" + "\n" + diverged + "\n" + lines_of(5)
    (run / "metrics.jsonl").write_text(text)
    body = metrics(base_url, "broken").json()
    assert body["lines"] == 6
    assert body["records"] == [record(1), {"step": 4, "loss": None, "skipped": True}, record(5)]
    assert [e["line"] for e in body["errors"]] == [2, 3]
    assert "not JSON" in body["errors"][0]["message"]
    assert "not a JSON object" in body["errors"][1]["message"]


def test_lines_end_at_newlines_only(base_url, runs_dir):
    """A JSON string may hold U+2028 or U+0085 unescaped (`str.splitlines` would break the line
    there): only a newline ends a line."""
    run = runs_dir / "unicode"
    run.mkdir()
    noted = {"step": 2, "loss": 1.0, "note": "a\u2028b\u0085c"}
    (run / "metrics.jsonl").write_text(
        lines_of(1) + json.dumps(noted, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    body = metrics(base_url, "unicode").json()
    assert body["lines"] == 2 and body["records"] == [record(1), noted]


@pytest.mark.parametrize(
    "name",
    [
        "..",
        "../outside",
        "%2E%2E/outside",
        "%2E%2E%2Foutside",
        "sft/../../outside",
        "sft%2F..%2F..%2Foutside",
        "%2Fetc",
        "..%5Coutside",
        "escape",  # a symlink out of the runs dir
        "cl2/pretrain/checkpoints",  # deeper than runs lie
        "empty",  # no metrics.jsonl
    ],
)
def test_names_outside_the_runs_are_refused(base_url, name):
    """Sent byte for byte (an HTTP client would resolve the dot segments before sending)."""
    status, body = raw_get(base_url, f"/v1/runs/{name}/metrics")
    assert status in (400, 404)
    assert json.loads(body)["error"]["code"] in ("invalid_run", "run_not_found")
    assert SECRET not in body


@pytest.mark.parametrize("after", ["-1", "x", "1.5", "", "٣"])
def test_after_must_be_a_line_count(base_url, after):
    response = metrics(base_url, "sft", after=after)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "after"


def test_without_a_runs_dir_the_runs_routes_say_how_to_get_one(engine):
    with running(create_app(engine, model_name=NAME, api_key=KEY)) as url:
        config = get(url, "/v1/ui/config").json()
        listing, one = get(url, "/v1/runs"), metrics(url, "sft")
    assert config["runs"] is False
    for response in (listing, one):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "no_runs"
        assert "--runs DIR" in response.json()["error"]["message"]
