"""turbo serves Python WSGI and ASGI apps from thread-per-core io_uring
shards. The server is the extension module `turbo._turbo`; the `turbo`
command and `python -m turbo` run it in this interpreter (`turbo.__main__`).
Importing this package loads nothing else."""
