"""TechEmpower's Django benchmark app (FrameworkBenchmarks,
frameworks/Python/django), rewritten here to its test rules: JSON,
single query, multiple queries, fortunes, updates and plaintext, on
PostgreSQL through psycopg2, with orjson. bench/techempower.py serves it."""
