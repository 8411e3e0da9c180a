"""The `turbo` command: the console script pip installs into the
virtualenv's bin, and `python -m turbo`. It runs the server in this
interpreter, which hosts it: the supervisor is this process, and the workers
are forked from it, as Gunicorn's are."""

import sys


def main():
    try:
        from turbo import _turbo
    except ImportError as err:
        sys.stderr.write(f"turbo: error: {_why_not_loaded(err)}\n")
        return 1
    return _turbo.main(["turbo", *sys.argv[1:]])


def _why_not_loaded(err):
    """One line on why the extension module does not load here: most often a
    wheel built for another Python version than this one."""
    import os
    import sysconfig

    here = os.path.dirname(os.path.abspath(__file__))
    built = sorted(name for name in os.listdir(here) if name.startswith("_turbo."))
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ""
    running = f"Python {sys.version_info.major}.{sys.version_info.minor}"
    if built and not any(name.endswith(suffix) for name in built):
        # _turbo.cpython-313-x86_64-linux-gnu.so: built for CPython 3.13.
        tag = built[0].split(".")[1].split("-")
        if len(tag) > 1 and tag[0] == "cpython" and tag[1].isdigit():
            made_for = f"Python {tag[1][0]}.{tag[1][1:]}"
        else:
            made_for = "another Python"
        return (f"this turbo was built for {made_for}, but {sys.executable} is {running}; "
                f"install turbo with this Python's pip")
    return f"cannot load turbo's extension module into {running}: {err}"


if __name__ == "__main__":
    sys.exit(main())
