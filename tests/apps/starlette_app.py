"""A Starlette app: routing, JSON, streaming responses, lifespan state."""

import contextlib

from starlette.applications import Starlette
import os

from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"started": True}


async def home(request):
    return PlainTextResponse("Hello from Starlette")


async def echo(request):
    data = await request.json()
    return JSONResponse({"got": data, "started": request.state.started, "path": request.url.path})


async def numbers(request):
    async def gen():
        for i in range(5):
            yield f"{i}\n"
    return StreamingResponse(gen(), media_type="text/plain")


async def download(request):
    return FileResponse(os.environ["TURBO_TEST_FILE"])


app = Starlette(routes=[Route("/download", download), Route("/", home), Route("/echo", echo, methods=["POST"]),
                        Route("/numbers", numbers)], lifespan=lifespan)
