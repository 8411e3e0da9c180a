"""A Django project on PostgreSQL through psycopg2, with orjson in its views:
ORM reads, a template, updates in a transaction, the admin with its login
and CSRF, and a file upload (tests/test_real_apps.py). The database comes
from libpq's PG* variables."""
