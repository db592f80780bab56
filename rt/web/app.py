"""The quart-trio application: every route of PROTOCOL.md section 4 and the streams.

Foreign exceptions are translated once, here: `RtError` to its status and
JSON body, werkzeug's HTTP errors to the PROTOCOL.md codes, anything else
to 500 `internal`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

from quart import Response, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from rt import __version__
from rt.core.codec import decode_object
from rt.core.errors import RtError, bad_request
from rt.core.grammar import (
    check_client,
    check_flow,
    check_user,
    normalize_tag,
    parse_int,
)
from rt.core.ops import Op, delete_op, edit_op, post_op, tag_op
from rt.service import Service
from rt.transports import ALL_TRANSPORTS, FRAMERS, STREAM_HEADERS
from rt.web.http import JSON_TYPE, error_response, json_response, loggable, origin_allowed
from rt.web.raw_routes import raw_routes
from rt.web.streaming import StreamBody, parse_stream_request
from rt.web.wsconn import serve_websocket

log = logging.getLogger("rt.access")

CORS_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, Last-Event-ID"


def create_app(service: Service) -> QuartTrio:
    """A quart-trio app serving `service`."""
    config = service.config
    app = QuartTrio("rt", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body
    app.config["RESPONSE_TIMEOUT"] = None  # streams end on their own terms, never Quart's
    app.config["BODY_TIMEOUT"] = 30

    async def body_json() -> dict[str, Any]:
        data = await request.get_data(cache=False)
        if not data:
            raise bad_request("this request needs a JSON object body")
        return decode_object(data)

    async def user() -> tuple[str, str]:
        return await service.authenticate(request.headers.get("Authorization"))

    # -- cross-cutting -------------------------------------------------------

    @app.before_request
    async def before() -> Response | None:
        if request.method == "OPTIONS":
            return Response(b"", status=204)
        if service.draining:
            return error_response(
                RtError("shutting_down", "the server is restarting; retry shortly", retry_after=2)
            )
        return None

    @app.after_request
    async def after(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin is not None and origin_allowed(
            origin, request.scheme, request.headers.get("Host"), config.allow_origin
        ):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "Retry-After"
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
                response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
                response.headers["Access-Control-Max-Age"] = "600"
        response.headers.add("Vary", "Origin")
        # rt's access log: never the query string, which may hold a ticket, and
        # the path escaped (a decoded %0A would forge a line).
        log.info("%s %s %s", loggable(request.method), loggable(request.path), response.status_code)
        return response

    @app.errorhandler(RtError)
    async def on_rt_error(error: RtError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def on_http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = {404: "not_found", 413: "too_large", 401: "unauthorized", 403: "forbidden"}.get(
            status, "bad_request" if status < 500 else "internal"
        )
        response = error_response(RtError(code, error.description or error.name))
        response.status_code = status
        return response

    @app.errorhandler(Exception)
    async def on_error(error: Exception) -> Response:
        logging.getLogger("rt").exception("rt: unexpected error serving %s", loggable(request.path))
        return error_response(RtError("internal", "the server failed; retry"))

    # -- public --------------------------------------------------------------

    @app.get("/health")
    async def health() -> Response:
        return json_response({"status": "ok"})

    @app.get("/info")
    async def info() -> Response:
        return json_response(
            {
                "protocol": 1,
                "version": __version__,
                "transports": list(ALL_TRANSPORTS),
                "guests": config.guests,
                "limits": config.limits(),
            }
        )

    @app.post("/auth/guest")
    async def guest() -> Response:
        body = await body_json()
        name, token = await service.create_guest(body.get("name"), request.remote_addr or "")
        return json_response({"user": name, "token": token}, 201)

    @app.post("/auth/ticket")
    async def ticket() -> Response:
        name, token = await user()
        body = await body_json()
        client = check_client(body.get("client"))
        ticket, expires = await service.tickets.issue(name, client, token)
        return json_response({"ticket": ticket, "expires": expires})

    @app.get("/me")
    async def me() -> Response:
        name, _ = await user()
        return json_response({"user": name, "flows": [f.name for f in service.visible_flows(name)]})

    # -- flows -----------------------------------------------------------------

    @app.get("/flows")
    async def list_flows() -> Response:
        name, _ = await user()
        return json_response({"flows": [f.to_dict() for f in service.visible_flows(name)]})

    @app.post("/flows")
    async def create_flow() -> Response:
        name, _ = await user()
        body = await body_json()
        flow_name = check_flow(body.get("name"), "name")
        private = body.get("private", False)
        if not isinstance(private, bool):
            raise bad_request("private must be true or false")
        flow = await service.directory.create_flow(flow_name, private=private, owner=name)
        return json_response(flow.to_dict(), 201)

    @app.post("/flows/<flow>/members")
    async def add_member(flow: str) -> Response:
        name, _ = await user()
        body = await body_json()
        await service.add_member(name, check_flow(flow), body.get("user"))
        return Response(b"", status=204)

    @app.delete("/flows/<flow>/members/<member>")
    async def remove_member(flow: str, member: str) -> Response:
        name, _ = await user()
        await service.remove_member(name, check_flow(flow), check_user(member))
        return Response(b"", status=204)

    @app.get("/flows/<flow>/presence")
    async def presence(flow: str) -> Response:
        name, _ = await user()
        await service.require_flow(name, check_flow(flow))
        return json_response({"users": service.presence.online(flow)})

    @app.post("/flows/<flow>/typing")
    async def typing(flow: str) -> Response:
        name, _ = await user()
        await service.typing(name, check_flow(flow))
        return Response(b"", status=204)

    # -- messages --------------------------------------------------------------

    @app.get("/flows/<flow>/messages")
    async def history(flow: str) -> Response:
        name, _ = await user()
        args = request.args
        limit = parse_int(args.get("limit"), "limit", minimum=1)
        limit = 50 if limit is None else limit
        if limit > 500:
            raise bad_request("limit must be at most 500")
        tag = args.get("tag")
        page = await service.history(
            name,
            check_flow(flow),
            before=parse_int(args.get("before"), "before"),
            after=parse_int(args.get("after"), "after"),
            limit=limit,
            tag=normalize_tag(tag) if tag is not None else None,
        )
        return json_response(page)

    async def run_op(op: Op) -> Response:
        # PROTOCOL.md section 2: the request is parsed and validated (400, 413)
        # before authentication (401), so ops are built for a placeholder user.
        name, _ = await user()
        result = await service.apply(dataclasses.replace(op, user=name))
        return json_response(result.body, result.status)

    @app.post("/flows/<flow>/messages")
    async def post(flow: str) -> Response:
        return await run_op(post_op("", flow, await body_json()))

    @app.patch("/flows/<flow>/messages/<message>")
    async def edit(flow: str, message: str) -> Response:
        return await run_op(edit_op("", flow, _message_id(message), await body_json()))

    @app.post("/flows/<flow>/messages/<message>/tags")
    async def tags(flow: str, message: str) -> Response:
        return await run_op(tag_op("", flow, _message_id(message), await body_json()))

    @app.delete("/flows/<flow>/messages/<message>")
    async def delete(flow: str, message: str) -> Response:
        return await run_op(delete_op("", flow, _message_id(message), request.args.get("uuid")))

    # -- the demo page and the browser client ---------------------------------

    @app.get("/")
    async def index() -> Response:
        return await _static_file("index.html")

    @app.get("/static/<path:name>")
    async def static(name: str) -> Response:
        return await _static_file(name)

    # -- metrics ---------------------------------------------------------------

    @app.get("/metrics")
    async def metrics() -> Response:
        if config.metrics_token is not None:
            if request.headers.get("Authorization", "") != f"Bearer {config.metrics_token}":
                raise RtError("unauthorized", "send Authorization: Bearer <metrics token>")
        elif (
            request.remote_addr not in ("127.0.0.1", "::1")
            or "Forwarded" in request.headers
            or "X-Forwarded-For" in request.headers
        ):
            raise RtError(
                "forbidden",
                "metrics are served to loopback clients only; "
                "configure --metrics-token to read them remotely",
            )
        return Response(
            service.metrics.render(),
            status=200,
            content_type="text/plain; version=0.0.4; charset=utf-8",
        )

    # -- streams ---------------------------------------------------------------

    @app.get("/stream/<transport>")
    async def stream(transport: str) -> Response:
        framer = FRAMERS.get(transport)
        if framer is None or transport == "ws":
            raise RtError(
                "not_found",
                f"no stream transport {transport!r}; this server has "
                f"{', '.join(ALL_TRANSPORTS)} (ws by WebSocket upgrade)",
            )
        args = request.args
        framer = framer.for_request(args.get("callback"))
        last_event_id = request.headers.get("Last-Event-ID") if transport == "sse" else None
        params = await parse_stream_request(
            service, args, request.headers.get("Authorization"), transport, last_event_id
        )
        if framer.polling:
            parts = await service.poll(
                user=params.user,
                token=params.token,
                client=params.client,
                flows=params.flows,
                transport=transport,
                cursor=params.cursor,
                epoch=params.epoch,
            )
            service.metrics.events_delivered.labels(transport).inc(len(parts))
            return Response(
                framer.answer(parts),
                status=200,
                content_type=framer.content_type,
                headers=STREAM_HEADERS,
            )
        body = StreamBody(
            service,
            framer,
            params,
            body_framing=_body_framing(request.method, request.http_version),
        )
        response = Response(
            body, status=200, content_type=framer.content_type, headers=STREAM_HEADERS
        )
        response.timeout = None
        return response

    @app.websocket("/stream/ws")
    async def stream_ws() -> None:
        # The object behind Quart's context-local proxy: it outlives the proxy's context.
        await serve_websocket(service, websocket._get_current_object())  # type: ignore[attr-defined]

    if service.config.fast_paths:
        # Upgrades to /stream/ws on a fresh plain-TCP connection skip hypercorn's and
        # Quart's WebSocket layers (rt/web/raw_routes.py); the route above serves the rest.
        routes = raw_routes(service, websocket=serve_websocket)
        app.rt_raw_routes = routes  # type: ignore[attr-defined]
    return app


def _body_framing(method: str, http_version: str) -> str | None:
    """How hypercorn (h11) frames a streaming GET response body without Content-Length."""
    if method != "GET":
        return None
    return {"1.1": "chunked", "1.0": "close"}.get(http_version)


STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": JSON_TYPE,
}
# The demo renders user content as text only; this policy is the second line of
# defence: no inline script or style, no plugins, connections to this origin only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'self'"
)


def _static_names() -> dict[str, Path]:
    """Every servable file of rt/static, by its URL name (`rt.js`, `sub/x.js`)."""
    return {
        p.relative_to(STATIC_DIR).as_posix(): p
        for p in sorted(STATIC_DIR.rglob("*"))
        if p.is_file() and p.suffix in STATIC_TYPES
    }


STATIC_FILES = _static_names()


async def _static_file(name: str) -> Response:
    """A file of rt/static, or 404.

    The name is looked up among the files that exist, never joined to a
    path: a NUL byte, a 5,000-character name or `..` is just an unknown
    name (404), where the file system would have raised (a 500, issue 10).
    """
    path = STATIC_FILES.get(name)
    if path is None:
        raise RtError("not_found", "no such static file")
    body = path.read_bytes()
    # `no-cache` with a validator: the browser keeps the file and asks each time
    # whether it changed; an unchanged one costs a 304 and no body.
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "ETag": etag,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    tags = _entity_tags(request.headers.get("If-None-Match", ""))
    if etag in tags or "*" in tags:
        return Response(b"", status=304, headers=headers)
    return Response(body, status=200, content_type=STATIC_TYPES[path.suffix], headers=headers)


def _entity_tags(header: str) -> set[str]:
    """The entity tags of an If-None-Match header (weak ones compare as strong: RFC 9110
    8.8.3.2 weak comparison, which If-None-Match uses)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def _message_id(text: str) -> int:
    value = parse_int(text, "message id", minimum=1)
    assert value is not None
    return value
