import os

SECRET_KEY = "tfb-bench"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tfb.urls"
USE_TZ = False
USE_I18N = False
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
INSTALLED_APPS = ["tfb"]
MIDDLEWARE = []
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("PGDATABASE", "hello_world"),
        "USER": os.environ.get("PGUSER", "benchmarkdbuser"),
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        # Persistent connections, as TechEmpower's Django config keeps them.
        "CONN_MAX_AGE": 600,
    }
}
