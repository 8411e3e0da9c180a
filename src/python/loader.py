"""Loading the app, shared by the WSGI and ASGI bridges and executed once in
every interpreter: Gunicorn's MODULE:NAME and MODULE:factory(args) specs,
tracebacks for the error log, and telling WSGI from ASGI apps."""

import ast
import importlib
import inspect
import os
import sys
import traceback


class AppLoadError(Exception):
    pass


def load_app(module_name, expr, pythonpath=()):
    """Imports MODULE and evaluates NAME or NAME(args) in it, as Gunicorn does,
    with the working directory and then `pythonpath` first on sys.path."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for directory in reversed(pythonpath):
        if directory not in sys.path:
            sys.path.insert(0, directory)
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError:
        raise AppLoadError(f"Failed to parse {expr!r} as an attribute name or function call.")
    args, kwargs, call = [], {}, False
    if isinstance(tree, ast.Call):
        call = True
        try:
            args = [ast.literal_eval(a) for a in tree.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in tree.keywords}
        except ValueError:
            raise AppLoadError(f"Failed to parse arguments as literal values: {expr!r}")
        tree = tree.func
    if not isinstance(tree, ast.Name):
        raise AppLoadError(f"Failed to parse {expr!r} as an attribute name or function call.")
    name = tree.id
    module = importlib.import_module(module_name)
    try:
        app = getattr(module, name)
    except AttributeError:
        raise AppLoadError(f"Failed to find attribute {name!r} in {module_name!r}.")
    if call:
        app = app(*args, **kwargs)
        if app is None:
            raise AppLoadError(f"The function {name!r} in {module_name!r} returned None.")
    if not callable(app):
        raise AppLoadError(f"Application object must be callable, got {type(app).__name__}.")
    return app


def format_exception(exc, tb):
    # Before 3.12 a fetched exception may not carry its traceback itself.
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def subinterpreter_refusal(exc):
    """The text of a 'does not support loading in subinterpreters' error, which
    names the module that refused."""
    while exc is not None:
        if isinstance(exc, ImportError) and "subinterpreter" in str(exc):
            return str(exc)
        exc = exc.__cause__ or exc.__context__
    return None


def is_asgi(app):
    """ASGI 3: a coroutine function, or an object whose __call__ is one."""
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)
    return call is not None and not inspect.isfunction(app) and inspect.iscoroutinefunction(call)
