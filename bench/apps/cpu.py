"""A CPU-bound WSGI handler (tens of milliseconds of pure Python per request): the app
for measuring how turbo's throughput scales with shards."""


def app(environ, start_response):
    total = 0
    for i in range(50_000):
        total += i * i % 7
    body = str(total).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
