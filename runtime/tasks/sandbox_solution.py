"""The solution's side of the sandbox, and the message format both sides speak.

Run as `python -I -B -S sandbox_solution.py` in the jail, as an unprivileged user, with one
channel (a socket on descriptor 3) to the tester. Standard library only. It reads its job
(the untrusted source and the name of the function to serve), installs what it can from
inside (a seccomp filter and an audit hook, see `sandbox_guard.py`), says which took effect
in its first message, and only then runs the source. With a function to serve it then
answers calls with plain values; without one it reports how the program ended. Nothing it
sends can make a test pass: the tester decodes messages into plain values (None, bool, int,
float, complex, str, bytes, list, tuple, set, frozenset, dict) and judges them itself. The
supervisor loads this module by path for `send`, `receive`, `encode` and `decode`.
"""

from __future__ import annotations

import builtins
import json
import linecache
import os
import struct
import sys
import traceback

CHANNEL_FD = 3
MAX_MESSAGE_BYTES = 16 << 20
MAX_DEPTH = 100
LARGE_INT = 1 << 63  # larger ints cross as hexadecimal text
PROGRAM_NAME = "<solution>"
SEQUENCES = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


class ProtocolError(Exception):
    """A message that is not a well-formed frame of plain values."""


def frame(message: dict) -> bytes:
    """One frame: a 4-byte big-endian length, then the message as JSON."""
    data = json.dumps(message, separators=(",", ":")).encode()
    return struct.pack(">I", len(data)) + data


def send(fd: int, message: dict | bytes) -> None:
    view = memoryview(message if isinstance(message, bytes) else frame(message))
    while view:
        view = view[os.write(fd, view):]


def receive(fd: int) -> dict | None:
    """The next frame as a one-key dict, None at end of stream; ProtocolError for anything else."""
    header = _read(fd, 4)
    if not header:
        return None
    if len(header) < 4:
        raise ProtocolError("a truncated message header")
    (size,) = struct.unpack(">I", header)
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"a message of {size} bytes (at most {MAX_MESSAGE_BYTES})")
    data = _read(fd, size)
    if len(data) < size:
        raise ProtocolError("a truncated message")
    try:
        message = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"a message that is not JSON ({type(exc).__name__})") from None
    if type(message) is not dict or len(message) != 1:
        raise ProtocolError("a message that is not a one-key object")
    return message


def _read(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def encode(value: object, depth: int = 0) -> object:
    """A plain value -> JSON data (containers tagged, so tuple, set and dict keys survive);
    subclasses become their base type; TypeError for anything else."""
    if depth > MAX_DEPTH:
        raise TypeError(f"a value nested more than {MAX_DEPTH} deep")
    if value is None or value is True or value is False:
        return value
    if isinstance(value, int):
        number = int(value)
        return number if -LARGE_INT < number < LARGE_INT else {"int": format(number, "x")}  # hex has no digit cap
    for kind in (float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, complex):
        return {"complex": [float(value.real), float(value.imag)]}
    if isinstance(value, dict):
        return {"dict": [[encode(key, depth + 1), encode(item, depth + 1)] for key, item in dict.items(value)]}
    for tag, kind in SEQUENCES.items():
        if isinstance(value, kind):
            return {tag: [encode(item, depth + 1) for item in kind.__iter__(value)]}
    raise TypeError(f"a {type(value).__name__} is not a plain value")


def decode(data: object, depth: int = 0) -> object:
    """JSON data from `encode` -> a plain value of exactly the built-in types; ProtocolError otherwise."""
    kind = type(data)
    if data is None or kind in (bool, int, float, str):
        return data
    if depth > MAX_DEPTH or kind is not dict or len(data) != 1:
        raise ProtocolError("a value that is not plain data")
    ((tag, items),) = data.items()
    try:
        if tag == "int" and type(items) is str:
            return int(items, 16)
        if tag == "bytes" and type(items) is str:
            return bytes.fromhex(items)
        if tag == "complex" and type(items) is list and len(items) == 2 and {type(x) for x in items} <= {int, float}:
            return complex(*items)
        if tag == "dict" and type(items) is list and all(type(pair) is list and len(pair) == 2 for pair in items):
            return {decode(key, depth + 1): decode(item, depth + 1) for key, item in items}
        if tag in SEQUENCES and type(items) is list:
            return SEQUENCES[tag](decode(item, depth + 1) for item in items)
    except (TypeError, ValueError, RecursionError) as exc:  # an unhashable key, bad hex
        raise ProtocolError(f"a value that is not plain data ({type(exc).__name__})") from None
    raise ProtocolError(f"a value tagged {str(tag)[:40]!r}")


def run_source(source: str, namespace: dict) -> tuple[str, str] | None:
    """Execute `source` in `namespace`: None when it runs to its end, else (status, detail)
    with status "failed" or "memory"; sys.exit() anywhere counts as failed."""
    linecache.cache[PROGRAM_NAME] = (len(source), None, source.splitlines(True), PROGRAM_NAME)
    try:
        exec(compile(source, PROGRAM_NAME, "exec"), namespace)
    except MemoryError:
        return ("memory", "MemoryError")
    except SystemExit as exc:
        return ("failed", f"exited early: SystemExit({exc.code!r})")
    except BaseException as exc:
        return ("failed", describe(exc))
    return None


def flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def describe(exc: BaseException) -> str:
    """Print the traceback from the untrusted frames on; return 'Type: message'."""
    try:
        sys.stdout.flush()
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
        return f"{type(exc).__name__}: {exc}"[:500]
    except BaseException:
        return type(exc).__name__


def serve(function) -> None:
    """Answer {"call": [args, kwargs]} with {"return": value} or {"raise": [type, detail]} until the channel closes."""
    while True:
        message = receive(CHANNEL_FD)
        if message is None or "call" not in message:
            return
        args, kwargs = message["call"]
        try:
            reply = frame({"return": encode(function(*decode(args), **decode(kwargs)))})
        except MemoryError:
            reply = frame({"raise": ["MemoryError", ""]})
        except BaseException as exc:
            reply = frame({"raise": [type(exc).__name__, describe(exc)]})
        flush()
        send(CHANNEL_FD, reply)


def load_sibling(name: str):
    """A module next to this file (the jail's bootstrap folder holds only ours)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                     f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    message = receive(CHANNEL_FD)
    if message is None or "job" not in message:
        os._exit(2)
    job = message["job"]
    layers = []
    guard = load_sibling("sandbox_guard")
    if guard.install_seccomp():
        layers.append("seccomp")
    sys.addaudithook(guard.make_hook(job["workdir"], lambda what: send(CHANNEL_FD, {"forbidden": what})))
    layers.append("audit")
    send(CHANNEL_FD, {"hello": layers})  # the first message, sent before any untrusted code runs
    sys.path.extend(job["site_packages"])  # started with -S: faster, and no .pth file runs
    del message, guard
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    ended = run_source(job["source"], namespace)
    entry_point = job["entry_point"]
    if ended is None and entry_point is not None:
        function = namespace.get(entry_point)
        if callable(function):
            flush()
            send(CHANNEL_FD, {"ready": True})
            serve(function)
            os._exit(0)
        ended = ("failed", f"NameError: the solution defines no function {entry_point!r}")
    flush()
    send(CHANNEL_FD, {"end": list(ended or ("passed", ""))})
    os._exit(0)  # no atexit hooks, no waiting for threads


if __name__ == "__main__":
    main()
