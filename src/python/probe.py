"""Which compiled extension modules the app could import refuse an own-GIL
sub-interpreter: `--isolation auto` decides from this, before any worker
serves (docs/architecture.md, "Choosing the isolation").

The host's main interpreter runs `decide`. It lists every extension module on
the app's sys.path (the virtualenv's site-packages, the working directory,
--pythonpath; not the standard library, which is the interpreter's own) and
takes the verdicts it cached by file identity (path, size, mtime). It loads
each of the rest in a child process, in an isolated sub-interpreter configured
as a shard's, so that an extension that crashes costs only the child.

The same source runs as that child (`python -c SOURCE probe FD MODE PATHS`)."""

import importlib.machinery
import json
import os
import sys
import sysconfig
import time

# Bumped when a verdict's meaning changes, so older caches are not read.
FORMAT = 1
# Folders walked at most: a working directory of `/` must not walk the disk.
MAX_FOLDERS = 50_000
# A module whose import runs longer than this counts as refusing.
MODULE_TIMEOUT = 30.0
# Modules named in the one-line verdict.
NAMED = 3

REFUSED, LOADS, BROKEN, NOT_A_MODULE = "refused", "loads", "broken", "not a module"


def decide(source, pythonpath, cwd, cache_dir):
    """Returns (keep sub-interpreters, the log line, the refusing modules with
    their reasons)."""
    started = time.monotonic()
    cache, cached_listings, cache_path = read_cache(cache_dir)
    files, stopped, listings = extension_files(roots(pythonpath, cwd), cached_listings)
    verdicts, todo = {}, []
    for name, path, identity in files:
        known = cache.get(path)
        if known and known[0] == identity:
            verdicts[path] = (name, known[1], known[2])
        else:
            todo.append((name, path, identity))
    for (name, path, identity), (verdict, reason) in zip(todo, probe(source, todo, pythonpath, cwd)):
        verdicts[path] = (name, verdict, reason)
        cache[path] = [identity, verdict, reason]
    unsaved = None
    if todo or listings != cached_listings:
        unsaved = write_cache(cache_path, {p: cache[p] for p in verdicts}, listings)
    refused = sorted((name, reason) for name, verdict, reason in verdicts.values() if verdict == REFUSED)
    modules = sum(1 for _, verdict, _ in verdicts.values() if verdict != NOT_A_MODULE)
    elapsed = (time.monotonic() - started) * 1000
    cost = f"{len(todo)} probed, {len(files) - len(todo)} cached, {elapsed:.0f} ms"
    if unsaved:
        cost += f"; verdicts not cached: {unsaved}"
    if stopped:
        line = (f"Isolation: one worker process per shard: the search for compiled modules "
                f"stopped at {MAX_FOLDERS} folders under {stopped} ({cost}); "
                f"--isolation subinterpreter pins the other mode")
        return False, line, refused
    if refused:
        names = ", ".join(name for name, _ in refused[:NAMED])
        more = f" and {len(refused) - NAMED} more" if len(refused) > NAMED else ""
        line = (f"Isolation: one worker process per shard: {len(refused)} of {modules} compiled "
                f"modules the app could import refuse sub-interpreters ({names}{more}; {cost}); "
                f"--isolation subinterpreter or --isolation process pins a mode")
        return False, line, refused
    line = (f"Isolation: one sub-interpreter per shard: all {modules} compiled modules the app "
            f"could import support them ({cost}); --isolation process pins the other mode")
    return True, line, refused


def roots(pythonpath, cwd):
    """The folders an app imports from, as a shard's sys.path has them: the
    loader puts --pythonpath and the working directory first."""
    skip = {os.path.realpath(p) for p in (sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib"))}
    skip |= {os.path.join(p, "lib-dynload") for p in set(skip)}
    found = []
    for entry in [*pythonpath, cwd, *sys.path]:
        path = os.path.realpath(os.path.join(cwd, entry or "."))
        if path not in skip and path not in found and os.path.isdir(path):
            found.append(path)
    return found


def extension_files(folders, cached):
    """(dotted name, path, (size, mtime)) of each extension module importable
    from `folders`, the folder whose walk stopped at MAX_FOLDERS if one did,
    and the listings of the folders walked. Only folders named as identifiers can be packages; turbo's own
    module is left out, as shards never import it.

    A listing is what a folder holds, cached by the folder's mtime, which
    changes as entries come and go: a warm walk stats each folder instead of
    reading it."""
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    own = getattr(sys.modules.get("turbo._turbo"), "__file__", None)
    own = own and os.stat(own)
    seen_files = {(own.st_dev, own.st_ino)} if own else set()
    seen_links, found, walked, listings = set(), [], 0, {}
    for root in folders:
        stack = [(root, "")]
        while stack:
            folder, prefix = stack.pop()
            walked += 1
            if walked > MAX_FOLDERS:
                return found, root, listings
            try:
                mtime = os.stat(folder).st_mtime_ns
                listing = cached.get(folder)
                if listing is None or listing[0] != mtime:
                    listing = [mtime, *list_folder(folder, suffixes)]
            except OSError:
                continue
            listings[folder] = listing
            _, subfolders, modules = listing
            for name, link in subfolders:
                path = os.path.join(folder, name)
                if link:
                    # Only links can make the walk go round.
                    target = os.path.realpath(path)
                    if target in seen_links:
                        continue
                    seen_links.add(target)
                stack.append((path, f"{prefix}{name}."))
            for stem, name in modules:
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) not in seen_files:
                    seen_files.add((st.st_dev, st.st_ino))
                    found.append((prefix + stem, path, [st.st_size, st.st_mtime_ns]))
    return found, None, listings


def list_folder(folder, suffixes):
    """The folder's possible packages, as (name, is a link), and its possible
    extension modules, as (module name, file name)."""
    subfolders, modules = [], []
    for entry in os.scandir(folder):
        name = entry.name
        try:
            if entry.is_dir():
                if name.isidentifier():
                    subfolders.append((name, entry.is_symlink()))
                continue
        except OSError:
            continue
        suffix = next((s for s in suffixes if name.endswith(s)), None)
        if suffix is not None and name[: -len(suffix)].isidentifier():
            modules.append((name[: -len(suffix)], name))
    return subfolders, modules


def cache_file(cache_dir):
    """One file per Python build: verdicts differ between versions, and an
    abi3 module's path is the same for all of them."""
    import hashlib

    key = hashlib.sha256(f"{sys.executable}\0{sys.version}".encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{sys.implementation.cache_tag}-{key}.json")


def read_cache(cache_dir):
    """The cached verdicts by path, the cached folder listings, and the
    cache's path."""
    if not cache_dir:
        return {}, {}, None
    path = cache_file(cache_dir)
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("format") == FORMAT:
            return data["modules"], data["folders"], path
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {}, {}, path


def write_cache(path, verdicts, folders):
    """Writes the cache whole, through a rename; returns why it could not."""
    if path is None:
        return "no cache folder"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.{os.getpid()}"
        with open(temporary, "w") as f:
            json.dump({"format": FORMAT, "python": sys.version, "modules": verdicts, "folders": folders}, f)
        os.replace(temporary, path)
    except OSError as e:
        return f"{e.strerror or e} ({path})"
    return None


def probe(source, todo, pythonpath, cwd):
    """A (verdict, reason) for each of `todo`, in order. Each is loaded in an
    isolated sub-interpreter; one that fails there for another reason than a
    refusal is loaded again in a main interpreter: if it loads there, it
    refuses sub-interpreters all the same."""
    extra = [*pythonpath, cwd]
    verdicts = run_children(source, "sub", [(n, p) for n, p, _ in todo], extra)
    again = [i for i, (verdict, _) in enumerate(verdicts) if verdict == BROKEN]
    if again:
        mains = run_children(source, "main", [todo[i][:2] for i in again], extra)
        for i, (verdict, reason) in zip(again, mains):
            if verdict == LOADS:
                verdicts[i] = (REFUSED, f"loads only in a main interpreter: {verdicts[i][1]}")
    return verdicts


def run_children(source, mode, items, extra):
    """Runs probe children until each item has a verdict: a child that dies
    or hangs on a module gives that module its verdict, and a new child goes
    on with the next one."""
    verdicts = []
    while len(verdicts) < len(items):
        rest = items[len(verdicts):]
        done = one_child(source, mode, rest, extra)
        verdicts.extend(done)
        if len(done) < len(rest):
            # Crashed or hung in a sub-interpreter: it refuses them.
            failed = REFUSED if mode == "sub" else BROKEN
            verdicts.append((failed, f"{one_child.last_failure} while loading {rest[len(done)][0]}"))
    return verdicts


def one_child(source, mode, items, extra):
    """Verdicts from one child, for a prefix of `items`; the reason it stopped
    early is left in `one_child.last_failure`."""
    import selectors
    import subprocess

    one_child.last_failure = None
    read_end, write_end = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", source, "probe", str(write_end), mode, json.dumps(extra)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(write_end,),
        )
    finally:
        os.close(write_end)
    verdicts, buffered = [], b""
    with os.fdopen(read_end, "rb", buffering=0) as results, selectors.DefaultSelector() as sel:
        try:
            child.stdin.write(json.dumps(items).encode())
            child.stdin.close()
        except OSError:
            pass
        sel.register(results, selectors.EVENT_READ)
        deadline = time.monotonic() + MODULE_TIMEOUT
        while len(verdicts) < len(items):
            if not sel.select(max(0.0, deadline - time.monotonic())):
                one_child.last_failure = f"no answer in {MODULE_TIMEOUT:.0f} s"
                child.kill()
                break
            chunk = results.read(65536)
            if not chunk:
                break
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                verdict, reason = json.loads(line)
                verdicts.append((verdict, reason))
                deadline = time.monotonic() + MODULE_TIMEOUT
    status = child.wait()
    if len(verdicts) < len(items) and one_child.last_failure is None:
        one_child.last_failure = (f"the probe process died of signal {-status}" if status < 0
                                  else f"the probe process exited with status {status}")
    return verdicts


# The child. --------------------------------------------------------------

LOAD = """\
import sys, importlib.util
if {zoneinfo}:
    # CPython 3.12's _zoneinfo crashes in a second interpreter; shards hide it.
    sys.modules["_zoneinfo"] = None
for p in reversed({extra!r}):
    if p not in sys.path:
        sys.path.insert(0, p)
spec = importlib.util.spec_from_file_location({name!r}, {path!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
"""


def is_module(name, path):
    """A file with only the bare `.so` suffix may be any shared library: it is
    a module only if it exports the init function its name calls for."""
    if not path.endswith(".so") or any(path.endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES if s != ".so"):
        return True
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return m.find(b"PyInit_" + name.rsplit(".", 1)[-1].encode() + b"\0") >= 0


def is_refusal(exc_type, message):
    return exc_type == "ImportError" and "subinterpreter" in message


def child(fd, mode, extra):
    items = json.load(sys.stdin)
    out = os.fdopen(fd, "w", buffering=1)
    old_312 = sys.version_info[:2] == (3, 12)
    if mode == "sub" and old_312:
        # As the host does (python::hosted): 3.12.1 double-frees when a second
        # interpreter first imports these.
        for name in ("_datetime", "_decimal", "_ctypes", "_elementtree", "pyexpat"):
            try:
                __import__(name)
            except ImportError:
                pass
    interpreters = Interpreters() if mode == "sub" else None
    interp = None
    for name, path in items:
        try:
            if not is_module(name, path):
                out.write(json.dumps([NOT_A_MODULE, ""]) + "\n")
                continue
        except (OSError, ValueError):
            pass
        code = LOAD.format(zoneinfo=old_312, extra=extra, name=name, path=path)
        if interpreters is None:
            try:
                exec(code, {"__name__": "turbo_probe"})
                failure = None
            except BaseException as e:
                failure = (type(e).__name__, str(e))
        else:
            if interp is None:
                interp = interpreters.create()
            failure = interpreters.run(interp, code)
        if failure is None:
            verdict, reason = LOADS, ""
        elif is_refusal(*failure):
            verdict, reason = REFUSED, failure[1]
        else:
            verdict, reason = BROKEN, f"{failure[0]}: {failure[1]}"
        out.write(json.dumps([verdict, reason]) + "\n")
        if verdict == BROKEN and interp is not None:
            # What a failed import left behind must not decide the next one.
            interpreters.destroy(interp)
            interp = None
    out.flush()
    # Skips interpreter finalisation, which extensions loaded here may not survive.
    os._exit(0)


class Interpreters:
    """Isolated sub-interpreters (own GIL, only extensions that declare
    support), through CPython's private module: `_interpreters` from 3.13,
    `_xxsubinterpreters` in 3.12."""

    def __init__(self):
        try:
            import _interpreters as api

            self.create = lambda: api.create("isolated")
        except ImportError:
            import _xxsubinterpreters as api

            self.create = lambda: api.create(isolated=True)
        self.api = api

    def run(self, interp, code):
        """None, or the (type name, message) of what the code raised."""
        if hasattr(self.api, "exec"):
            info = self.api.exec(interp, code)
            if info is None:
                return None
            kind = getattr(info.type, "__name__", None) or str(info.type)
            return kind, str(info.msg)
        try:
            self.api.run_string(interp, code)
        except self.api.RunFailedError as e:
            # "<class 'ImportError'>: module x does not support ..."
            import re

            kind, _, message = str(e).partition(": ")
            return re.sub(r"^<class '(?:.*\.)?(\w+)'>$", r"\1", kind), message
        return None

    def destroy(self, interp):
        self.api.destroy(interp)


if __name__ == "__main__" and sys.argv[1:2] == ["probe"]:
    child(int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]))
