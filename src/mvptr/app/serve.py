"""``mvptr serve --index DIR``: the search page and HTTP API (:mod:`.server`) under uvicorn.

    mvptr serve --index runs/demo/index --vqa-model runs/demo/finetune/vqa/model   # http://127.0.0.1:8000/

It listens on this machine only (127.0.0.1) unless ``--host`` says otherwise, and answers
only requests addressed to the names it is reached by (:func:`allowed_hosts`). The access
log leaves out query strings (a query is what a user typed) unless ``--log-queries``. The
service needs the ``serve`` extra (fastapi, uvicorn); without it the rest of mvptr still
imports, and :func:`load_service` says what to install.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
from collections.abc import Sequence

from ..core.errors import ConfigError
from ..core.extras import MissingExtra, install_hint
from .api import Model
from .examples import index_detector
from .search import SearchIndex, index_limits

try:  # the serve extra: fastapi (with pydantic and starlette)
    from .server import LOOPBACK, create_app
except ModuleNotFoundError as err:
    if (err.name or "").split(".")[0] not in ("fastapi", "pydantic", "starlette"):
        raise
    create_app, MISSING, LOOPBACK = None, err.name, ("127.0.0.1", "localhost", "[::1]")
else:
    MISSING = None

__all__ = ["HideQueries", "allowed_hosts", "check_listen", "load_service", "make_server"]
HOST_NAME = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]|\*")


def allowed_hosts(bind: str, extra: Sequence[str] = ()) -> list[str]:
    """The ``Host`` names the server answers: this machine's loopback names when it listens on
    a loopback or wildcard address (0.0.0.0, ::), the bind address otherwise, and ``extra``
    (``--allowed-host``: the names other machines reach it by; ``*.example.org`` for a domain's
    names). ValueError for a name that is not one."""
    for name in extra:
        if not HOST_NAME.fullmatch(name):
            raise ConfigError(f"--allowed-host {name!r}: expected a host name or address without scheme or port "
                              "(example.org, *.example.org, 192.168.1.5, [fe80::1])")
    try:
        address = ipaddress.ip_address(bind.strip("[]"))
    except ValueError:
        address = None
    if bind == "localhost" or (address is not None and (address.is_loopback or address.is_unspecified)):
        names = list(LOOPBACK)
    else:
        names = [f"[{address}]" if address is not None and address.version == 6 else bind.lower()]
    return names + [n.lower() for n in extra if n.lower() not in names]


def check_listen(host: str, port: int) -> None:
    """Bind ``host``:``port`` once, as the server will, and let it go: ValueError saying why it
    cannot be listened on (a port out of range, one in use, an address of no interface here)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: expected a port number from 0 to 65535")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        raise ConfigError(f"--host {host}: not an address or host name of this machine ({err})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(address)
        except OSError as err:
            why = {errno.EADDRINUSE: "the port is in use by another program; stop it or choose another --port",
                   errno.EACCES: "not permitted (ports below 1024 need privileges); choose a --port above 1023",
                   errno.EADDRNOTAVAIL: "no interface of this machine has that address; check --host"}
            raise ConfigError(f"cannot listen on {host}:{port}: {why.get(err.errno, err.strerror)}") from None


class HideQueries(logging.Filter):
    """Drops the query string from uvicorn's access log lines (their third argument is the
    path with its query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?…", *args[3:])
        return True


def make_server(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", log_queries: bool = False):
    """A uvicorn server of ``app`` (call its ``run()``); its access log hides query strings
    unless ``log_queries``."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))  # configures logging
    access = logging.getLogger("uvicorn.access")
    for f in [f for f in access.filters if isinstance(f, HideQueries)]:
        access.removeFilter(f)
    if not log_queries:
        access.addFilter(HideQueries())
    return server


def load_service(index_dir: str, model_dir: str | None = None, vqa_model: str | None = None, nprobe: int | None = None,
                 hosts: Sequence[str] = LOOPBACK, *, detector: str | None = None, detector_kind: str = "demo",
                 **settings):
    """The FastAPI app over the index at ``index_dir``, answering the ``Host`` names ``hosts``;
    uploaded images are detected with ``detector`` (a ``detector_kind`` weights file), or the
    detector the index records (:func:`mvptr.app.examples.index_detector`); ``settings``: the
    model queue's (``workers``, ``queue``, ``window_ms``, ``max_batch``: see
    :func:`mvptr.app.server.create_app`)."""
    if create_app is None:
        raise MissingExtra(install_hint("serve", MISSING), name=MISSING)
    index = SearchIndex(index_dir, model_dir=model_dir, nprobe=nprobe)
    vqa = None
    if vqa_model:
        vqa = Model.from_pretrained(vqa_model, limits=index_limits(index.meta))  # the index's images, cut alike
        if getattr(getattr(vqa.model, "task_head", None), "answers", None) is None:
            raise ConfigError(f"{vqa_model}: no VQA head (fine-tune one with `mvptr finetune vqa`)")
    found, no_detector = index_detector(index, detector, detector_kind)
    if found is None:
        logging.getLogger("mvptr.serve").warning("searching by uploaded images is off: %s", no_detector)
    return create_app(index, vqa, hosts=hosts, detector=found, no_detector=no_detector, **settings)
