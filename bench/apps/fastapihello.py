"""A FastAPI hello world: routing, dependency resolution and JSON serialisation on
top of Starlette, the usual ASGI framework overhead."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/")
async def index():
    return {"message": "Hello, World!"}
