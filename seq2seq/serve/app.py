"""The HTTP side of a Server (FastAPI, pip install -e ".[serve]"): routes, one-line JSON errors, body limits."""
# No `from __future__ import annotations`: FastAPI reads the route functions' annotations (Request) at run time.
import asyncio
import ipaddress
import time
from contextlib import asynccontextmanager
from pathlib import Path

from seq2seq.serve.options import ApiError
from seq2seq.serve.registry import Server

STATIC = Path(__file__).resolve().parents[1] / "static"
GENERATE_PATHS = ("/v1/generate", "/v1/translate", "/v1/summarize")


def create_app(server: Server):
    # long: the routes are closures over one server, declared where FastAPI is imported (an optional extra)
    """The FastAPI application of a Server (its workers stop when the application shuts down)."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import HTMLResponse, JSONResponse
        from starlette.exceptions import HTTPException
    except ImportError as err:
        raise ValueError(f"seq2seq-serve needs FastAPI and uvicorn ({err}): pip install -e \".[serve]\"") from None

    @asynccontextmanager
    async def lifespan(app):
        yield
        server.close()

    app = FastAPI(title="seq2seq", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    page_file = STATIC / "index.html"

    @app.exception_handler(ApiError)
    async def api_error(request, err: ApiError):
        return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, err: HTTPException):  # 404 for an unknown path, 405 for a wrong method
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code,
                            headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request, err: Exception):  # a bug: logged with its traceback by the server
        return JSONResponse({"error": f"internal error ({type(err).__name__})"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        if not page_file.is_file():
            raise ApiError(404, f"the web page is not installed ({page_file.name} missing)")
        return HTMLResponse(page_file.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return server.health()

    @app.get("/v1/models")
    async def models(request: Request):
        server.check_token(request.headers.get("authorization"))
        return server.list_models()

    async def generate(request: Request):
        server.check_token(request.headers.get("authorization"))
        body = await _read_body(request, server.limits.max_request_bytes)
        served, inputs, opts, attention = server.parse(body)
        job = server.job(served, inputs, opts, attention)
        start = time.perf_counter()
        try:
            results = await asyncio.wrap_future(served.worker.submit(job))
        except ApiError:
            raise
        except Exception as err:  # noqa: BLE001 - a failed decode is this request's error, not the server's
            raise ApiError(500, f"decoding failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}") from None
        answer = server.response(served, job, results)
        answer["latency_ms"] = round((time.perf_counter() - start) * 1000, 2)
        return answer

    for path in GENERATE_PATHS:
        app.add_api_route(path, generate, methods=["POST"])
    return app


async def _read_body(request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the request body is {int(length)} bytes; this server takes at most {limit} "
                            f"(max_request_bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is more than {limit} bytes (max_request_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
