"""Response bodies made of chunks of chosen sizes, for checking that large chunks
(sent from the bytes object's own memory) and small ones (copied) come out in
order and framed right. The query string is `sizes=a,b,c` plus options:
`iter` yields the chunks (chunked framing on HTTP/1.1) instead of returning a
list, `length=N` sets a Content-Length. Chunk i is filled with byte i % 251."""

from urllib.parse import parse_qs


def chunks(query):
    q = parse_qs(query)
    sizes = [int(s) for s in q.get("sizes", ["0"])[0].split(",") if s]
    return q, [bytes([i % 251]) * n for i, n in enumerate(sizes)]


def wsgi(environ, start_response):
    q, parts = chunks(environ["QUERY_STRING"])
    headers = [("Content-Type", "application/octet-stream")]
    if "length" in q:
        headers.append(("Content-Length", q["length"][0]))
    start_response("200 OK", headers)
    return iter(parts) if "iter" in q else parts


async def asgi(scope, receive, send):
    q, parts = chunks(scope["query_string"].decode())
    headers = [(b"content-type", b"application/octet-stream")]
    if "length" in q:
        headers.append((b"content-length", q["length"][0].encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for i, part in enumerate(parts):
        await send({"type": "http.response.body", "body": part, "more_body": i + 1 < len(parts)})
    if not parts:
        await send({"type": "http.response.body", "body": b""})
