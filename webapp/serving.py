"""Serving the demo to a team: who may use it (a password), what one request may cost (the
limits) and what the server logs.

- **Password**: Gradio's own login, the password read from ``MMI_APP_PASSWORD`` or from a
  file (``--password-file`` or ``MMI_APP_PASSWORD_FILE``: one ``password`` line, or one
  ``user:password`` line per user), never from the command line (it would show in ``ps``
  and the shell history). The user name of a bare password is ``--user`` (default ``mmi``).
- **Refusal to start**: serving on an address other than loopback without a password is
  refused before anything is bound, unless ``--allow-no-password`` says it is meant.
- **Limits** (:class:`Limits`): the upload size (Gradio answers 413 with "File size
  exceeded maximum allowed size"), the queue length (a request beyond it gets "Queue is
  full"), and one concurrency group for every event that runs the model, so at most
  ``model_concurrency`` model calls hold memory at once whatever the tab.
- **Logs**: the start line (address, whether a password is on, the limits), a warning for
  each refused request and the traceback of an unexpected error. No image content and no
  expression text; ``--log-requests`` adds one line per model call with the endpoint, its
  duration and its outcome, still without content.
"""
from __future__ import annotations

import argparse
import functools
import ipaddress
import logging
import math
import os
import stat
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from mmi.predictor import DEFAULT_CACHE_BYTES

log = logging.getLogger("mmi.app")

PASSWORD_ENV = "MMI_APP_PASSWORD"
PASSWORD_FILE_ENV = "MMI_APP_PASSWORD_FILE"
DEFAULT_USER = "mmi"
ALLOW_FLAG = "--allow-no-password"
MODEL_GROUP = "mmi-model"
# the events that run the model (their twins, e.g. Shift+Enter, share the function)
MODEL_APIS = ("segment", "segment_ui", "word_importance", "lab_check", "failure_case")


class ServingError(ValueError):
    """A reason not to start (the message says what to do)."""


@dataclass
class Limits:
    """What one server accepts: upload size, waiting requests, model calls at once."""

    max_upload_mb: float = 50.0
    max_queue: int = 64
    model_concurrency: int = 2
    log_requests: bool = False

    def __post_init__(self):
        if not (math.isfinite(self.max_upload_mb) and self.max_upload_mb > 0):
            raise ServingError(f"--max-upload-mb must be a positive number, got {self.max_upload_mb}")
        if self.max_queue < 1:
            raise ServingError(f"--max-queue must be at least 1, got {self.max_queue}")
        if self.model_concurrency < 1:
            raise ServingError(f"--model-concurrency must be at least 1, got {self.model_concurrency}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


# ----------------------------------------------------------------------------- the password

def _parse_password_file(path: str, user: str) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="utf8") as f:
            lines = [line.rstrip("\r\n") for line in f if line.strip() and not line.lstrip().startswith("#")]
    except OSError as e:
        raise ServingError(f"cannot read the password file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ServingError(f"the password file {path} is not UTF-8 text") from None
    if not lines:
        raise ServingError(f"the password file {path} holds no password")
    try:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("the password file %s is readable by other users (chmod 600 it)", path)
    except OSError:
        pass
    if len(lines) == 1 and ":" not in lines[0]:
        return [(user, lines[0])]
    creds = []
    for i, line in enumerate(lines, 1):
        name, sep, password = line.partition(":")
        if not sep or not name.strip() or not password:
            raise ServingError(f"the password file {path}, line {i}: expected 'user:password' "
                               "(or a single line holding only the password)")
        creds.append((name.strip(), password))
    return creds


def read_credentials(password_file: str | None = None, user: str = DEFAULT_USER,
                     environ: Mapping[str, str] | None = None) -> list[tuple[str, str]] | None:
    """[(user, password)] for Gradio's ``auth``, or None when no password is configured.

    Order: ``password_file`` (the flag), then ``MMI_APP_PASSWORD_FILE``, then
    ``MMI_APP_PASSWORD``. ServingError when a named file is unreadable or empty."""
    env = os.environ if environ is None else environ
    path = password_file or env.get(PASSWORD_FILE_ENV)
    if path:
        return _parse_password_file(path, user)
    password = env.get(PASSWORD_ENV)
    if password is not None:
        if not password:
            raise ServingError(f"{PASSWORD_ENV} is set but empty")
        return [(user, password)]
    return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1, localhost); names other
    than localhost count as reachable from elsewhere."""
    h = (host or "").strip().strip("[]")
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_before_launch(host: str, credentials: list | None, allow_no_password: bool) -> None:
    """ServingError when ``host`` is reachable from other machines and no password is set
    (and ``--allow-no-password`` was not given)."""
    if credentials or is_loopback(host) or allow_no_password:
        if not credentials and not is_loopback(host):
            log.warning("serving on %s WITHOUT a password (%s): anyone who reaches this address can use the app",
                        host, ALLOW_FLAG)
        return
    raise ServingError(
        f"refusing to serve on {host} without a password: anyone who can reach this machine could use the app. "
        f"Set the password in the environment variable {PASSWORD_ENV} or in a file (--password-file FILE, "
        f"or {PASSWORD_FILE_ENV}); to serve it without a password on purpose, add {ALLOW_FLAG}.")


# ----------------------------------------------------------------------------- limits

def _logged(fn: Callable, name: str) -> Callable:
    """One log line per call: the endpoint, its duration and outcome (no arguments)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        start = time.perf_counter()
        outcome = "error"
        try:
            out = fn(*args, **kwargs)
            outcome = "ok"
            return out
        finally:
            log.info("request endpoint=%s seconds=%.2f outcome=%s", name, time.perf_counter() - start, outcome)

    return run


def apply_limits(demo: Any, limits: Limits) -> list[str]:
    """Put every event that runs the model (:data:`MODEL_APIS` and the events sharing their
    function) into one concurrency group of ``limits.model_concurrency``; returns the api
    names so limited. ServingError when one of :data:`MODEL_APIS` is missing (a renamed
    endpoint must not silently escape the limit)."""
    fns = list(demo.fns.values())
    named = {f.api_name: f for f in fns if isinstance(f.api_name, str)}
    missing = [a for a in MODEL_APIS if a not in named]
    if missing:
        raise ServingError(f"the app has no endpoint(s) {missing} to limit; update webapp.serving.MODEL_APIS")
    model_fns = {id(named[a].fn) for a in MODEL_APIS}
    limited = []
    for f in fns:
        if f.fn is not None and id(f.fn) in model_fns:
            f.concurrency_id, f.concurrency_limit = MODEL_GROUP, limits.model_concurrency
            if limits.log_requests:
                f.fn = _logged(f.fn, f.api_name if isinstance(f.api_name, str) else f"{f.name} (private)")
            limited.append(f.api_name if isinstance(f.api_name, str) else f.name)
    return limited


def launch_kwargs(limits: Limits, credentials: list | None) -> dict:
    """The extra arguments of ``demo.launch`` for these limits and credentials."""
    kw: dict[str, Any] = {"max_file_size": limits.max_upload_bytes}
    if credentials:
        kw["auth"] = list(credentials)
        kw["auth_message"] = "MMI demo: ask the person who runs this server for the password."
    return kw


def describe(host: str, port: int, credentials: list | None, limits: Limits) -> str:
    """The start line of the log (no secrets)."""
    who = f"password on ({len(credentials)} user(s))" if credentials else "no password"
    return (f"serving on http://{host}:{port}/ ({who}); uploads up to {limits.max_upload_mb:g} MB, "
            f"at most {limits.max_queue} requests queued, {limits.model_concurrency} model call(s) at once"
            + ("; one log line per model request (no content)" if limits.log_requests else ""))


def inline_image_ok(n_chars: int, limits: Limits | None) -> None:
    """ValueError when a ``data:`` URL image (sent inline, not uploaded) is over the upload limit."""
    if limits is not None and n_chars * 3 // 4 > limits.max_upload_bytes:
        raise ValueError(f"the image sent inline is over the upload limit of {limits.max_upload_mb:g} MB")



# ----------------------------------------------------------------------------- app.py's flags

class _NoPasswordFlag(argparse.Action):
    """``--password`` is refused (without echoing it): a flag shows in ``ps`` and the shell
    history. Without it, argparse would take ``--password`` as short for ``--password-file``."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"the password is never given on the command line (it would show in ps and the shell "
                     f"history): set {PASSWORD_ENV} or use --password-file FILE")


def add_arguments(p: Any) -> None:
    """The serving flags of ``app.py`` (an argparse parser). There is no password flag."""
    g = p.add_argument_group("serving to a team (password from $%s or a file; see README)" % PASSWORD_ENV)
    g.add_argument("--password-file", default=None,
                   help=f"file holding the password (one line) or 'user:password' lines (or set {PASSWORD_FILE_ENV}); "
                        f"the password itself is never a flag: use {PASSWORD_ENV} or this file")
    g.add_argument("--password", nargs="?", action=_NoPasswordFlag, help=argparse.SUPPRESS)
    g.add_argument("--user", default=DEFAULT_USER, help="user name of a bare password (default %(default)s)")
    g.add_argument(ALLOW_FLAG, action="store_true",
                   help="serve on a non-loopback --host without a password (refused otherwise)")
    g.add_argument("--max-upload-mb", type=float, default=Limits.max_upload_mb,
                   help="largest upload accepted, MB (default %(default)g)")
    g.add_argument("--max-queue", type=int, default=Limits.max_queue,
                   help="requests waiting at most; more get 'Queue is full' (default %(default)s)")
    g.add_argument("--model-concurrency", type=int, default=Limits.model_concurrency,
                   help="model calls running at once, all tabs together (default %(default)s)")
    g.add_argument("--cache-mb", type=float, default=DEFAULT_CACHE_BYTES / 2**20,
                   help="memory bound of the image feature cache, MB, alongside --cache-size (default %(default)g)")
    g.add_argument("--log-requests", action="store_true",
                   help="log one line per model call: endpoint, seconds, outcome (never images or expressions)")


def from_args(args: Any, environ: Mapping[str, str] | None = None) -> tuple[Limits, list[tuple[str, str]] | None]:
    """(limits, credentials) of parsed flags; ServingError when the server must not start
    (a bad limit, an unreadable password file, a non-loopback host without a password)."""
    if not (math.isfinite(args.cache_mb) and args.cache_mb > 0):
        raise ServingError(f"--cache-mb must be a positive number, got {args.cache_mb}")
    limits = Limits(args.max_upload_mb, args.max_queue, args.model_concurrency, args.log_requests)
    credentials = read_credentials(args.password_file, args.user, environ)
    check_before_launch(args.host, credentials, args.allow_no_password)
    return limits, credentials
