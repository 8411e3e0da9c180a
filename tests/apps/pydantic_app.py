"""A WSGI app built on pydantic, whose compiled core (like FastAPI's) refuses
to load in a sub-interpreter."""

import json
from urllib.parse import parse_qsl

import pydantic


class Item(pydantic.BaseModel):
    name: str
    price: float


def app(environ, start_response):
    try:
        item = Item(**dict(parse_qsl(environ["QUERY_STRING"])))
        status, body = "200 OK", item.model_dump_json().encode()
    except pydantic.ValidationError as e:
        status, body = "422 Unprocessable Entity", json.dumps({"errors": e.error_count()}).encode()
    start_response(status, [("Content-Type", "application/json")])
    return [body]
