"""Reads a Gunicorn config file in the supervisor's interpreter, as Gunicorn
does: the file (or python:MODULE) is executed, and its module-level names are
settings. Rust gets back the settings' values and what else it found."""

import importlib
import inspect
import os
import sys


def read(location, settings, hooks):
    """Returns (values, hooks found, other names, namespace) for the file at `location`,
    or for python:MODULE. `settings` and `hooks` are the names turbo knows."""
    if location.startswith("python:"):
        namespace = vars(importlib.import_module(location[len("python:"):]))
    else:
        namespace = {"__file__": location, "__name__": "__config__"}
        with open(location, "rb") as f:
            source = f.read()
        directory = os.path.dirname(os.path.abspath(location))
        if directory not in sys.path:
            sys.path.insert(0, directory)
        exec(compile(source, location, "exec"), namespace)
    values, found_hooks, others = {}, [], []
    for name, value in namespace.items():
        if name.startswith("_") or inspect.ismodule(value) or inspect.isclass(value):
            continue
        if name in settings:
            values[name] = value
        elif callable(value):
            if name in hooks:
                found_hooks.append(name)
        else:
            others.append(name)
    return values, found_hooks, others, namespace
