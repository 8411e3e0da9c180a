"""Gunicorn's logging configuration (logconfig, logconfig_dict,
logconfig_json), applied the way Gunicorn applies it: the gunicorn.error and
gunicorn.access loggers get Gunicorn's own handlers first, then the user's
configuration on top of Gunicorn's defaults. turbo's log lines and access
records then go through these loggers."""

import json
import logging
import os
import sys
from logging.config import dictConfig, fileConfig

CONFIG_DEFAULTS = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "INFO", "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {
            "level": "INFO", "handlers": ["error_console"], "propagate": True,
            "qualname": "gunicorn.error",
        },
        "gunicorn.access": {
            "level": "INFO", "handlers": ["console"], "propagate": True,
            "qualname": "gunicorn.access",
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "generic",
                    "stream": "ext://sys.stdout"},
        "error_console": {"class": "logging.StreamHandler", "formatter": "generic",
                          "stream": "ext://sys.stderr"},
    },
    "formatters": {
        "generic": {
            "format": "%(asctime)s [%(process)d] [%(levelname)s] %(message)s",
            "datefmt": "[%Y-%m-%d %H:%M:%S %z]",
            "class": "logging.Formatter",
        },
    },
}


class Atoms(dict):
    """The access record's arguments: a missing atom reads as '-', as with
    Gunicorn's SafeAtoms."""

    def __missing__(self, key):
        return "-"


def _handler(target, stream, formatter):
    handler = logging.StreamHandler(stream) if target == "-" else logging.FileHandler(target)
    handler.setFormatter(formatter)
    handler._turbo = True
    return handler


def setup(kind, source, accesslog, level):
    """Returns the gunicorn.error and gunicorn.access loggers, configured."""
    error = logging.getLogger("gunicorn.error")
    access = logging.getLogger("gunicorn.access")
    error.propagate = access.propagate = False
    error.setLevel(level)
    access.setLevel(logging.INFO)
    for log in (error, access):
        for handler in list(log.handlers):
            if getattr(handler, "_turbo", False):
                log.removeHandler(handler)
    # Standard error is already the error log file, when there is one.
    generic = logging.Formatter("%(asctime)s [%(process)d] [%(levelname)s] %(message)s",
                                "[%Y-%m-%d %H:%M:%S %z]")
    error.addHandler(_handler("-", sys.stderr, generic))
    if accesslog is not None:
        access.addHandler(_handler(accesslog, sys.stdout, logging.Formatter("%(message)s")))
    if kind == "dict":
        config = dict(CONFIG_DEFAULTS)
        config.update(source)
        dictConfig(config)
    elif kind == "json":
        config = dict(CONFIG_DEFAULTS)
        with open(source) as f:
            config.update(json.load(f))
        dictConfig(config)
    elif kind == "file":
        if not os.path.exists(source):
            raise RuntimeError(f"log config '{source}' not found")
        defaults = dict(CONFIG_DEFAULTS, __file__=source, here=os.path.dirname(source))
        fileConfig(source, defaults=defaults, disable_existing_loggers=False)
    return error, access


def access(logger, fmt, atoms):
    logger.info(fmt, Atoms(atoms))


def reopen():
    """USR1: log files are opened again, after rotation."""
    for log in (logging.getLogger("gunicorn.error"), logging.getLogger("gunicorn.access"),
                logging.getLogger()):
        for handler in log.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.acquire()
                try:
                    if handler.stream:
                        handler.stream.close()
                    handler.stream = handler._open()
                finally:
                    handler.release()
