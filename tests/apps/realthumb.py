"""A WSGI app that makes a PNG thumbnail of an uploaded image with Pillow
(tests/test_real_apps.py)."""

import io

from PIL import Image, UnidentifiedImageError


def app(environ, start_response):
    data = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.thumbnail((64, 64))
            out = io.BytesIO()
            image.save(out, "PNG")
    except UnidentifiedImageError:
        start_response("415 Unsupported Media Type", [("Content-Type", "text/plain")])
        return [b"not an image"]
    start_response("200 OK", [("Content-Type", "image/png")])
    return [out.getvalue()]
