"""ASGI apps that send the values Uvicorn accepts, and wrong ones. The path
picks the case."""

import threading


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    body = b"ok"
    headers = [(b"content-type", b"text/plain")]
    if path == "/lists":
        # The ASGI documentation's own example writes header pairs as lists.
        headers = [[b"content-type", b"text/plain"], [b"x-list", b"yes"]]
    elif path == "/bytes-like":
        headers = [(bytearray(b"x-array"), memoryview(b"view"))]
        body = memoryview(b"from a memoryview")
    elif path == "/bytearray":
        body = bytearray(b"from a bytearray")
    elif path == "/none-body":
        body = None
    elif path == "/str-body":
        body = "text"
    elif path == "/bad-pair":
        headers = [(b"x-three", b"a", b"b")]
    elif path == "/int-header":
        headers = [(b"x-int", 5)]
    elif path == "/reenter":

        def headers_that_send():
            yield (b"content-type", b"text/plain")
            # A send from inside the first one's header iteration: turbo
            # raises RuntimeError here.
            send({"type": "http.response.start", "status": 200, "headers": []})

        headers = headers_that_send()
    elif path == "/early":
        # A 1xx cannot be the final status.
        await send({"type": "http.response.start", "status": 103, "headers": []})
        return
    elif path == "/short-file":
        # pathsend of a file shorter than the Content-Length it declares.
        name, length = scope["query_string"].decode().rsplit(",", 1)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length.encode())]}
        )
        await send({"type": "http.response.pathsend", "path": name})
        return
    elif path == "/thread":
        body = str(threading.get_native_id()).encode()
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
