"""``popwatch-collector dashboards push``: the dashboards, their folder and the InfluxDB
data source, put into a running Grafana over its HTTP API (with grafana-client).

Idempotent: the data source and the folder keep fixed uids (``popwatch-influxdb``,
``popwatch``), an existing one is updated rather than duplicated, and each dashboard is
saved by its uid with ``overwrite``. A second push leaves Grafana as the first did.
Every failure is a :class:`PushError` saying which step failed and what Grafana
answered.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import requests
from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaException

from dashboards.build import FOLDER, INFLUX_UID, build_all

MESSAGE: Final = "popwatch-collector dashboards push"


class PushError(Exception):
    """A step of the push failed; ``str()`` names it and what Grafana answered."""


@dataclass(frozen=True)
class InfluxSource:
    """Where Grafana reaches InfluxDB: its URL as Grafana sees it, the database (the
    bucket through its DBRP mapping on 2.x), and a token for 2.x/3.x (sent as
    ``Authorization: Token ...``)."""

    url: str
    database: str
    token: str | None = None


def datasource_model(source: InfluxSource) -> dict[str, Any]:
    """The InfluxDB data source in InfluxQL mode, as the provisioning files define it."""
    model: dict[str, Any] = {
        "uid": INFLUX_UID,
        "name": "popwatch InfluxDB",
        "type": "influxdb",
        "access": "proxy",
        "url": source.url,
        "isDefault": False,  # an existing Grafana keeps its own default
        "jsonData": {"dbName": source.database, "httpMode": "GET", "timeInterval": "10s"},
    }
    if source.token:
        model["jsonData"]["httpHeaderName1"] = "Authorization"
        model["secureJsonData"] = {"httpHeaderValue1": f"Token {source.token}"}
    return model


def _answer(exc: GrafanaException) -> str:
    response = exc.response
    if isinstance(response, dict) and response.get("message"):
        said = str(response["message"])
    elif response:
        said = str(response)
    else:
        said = str(exc.message or exc)
    return f"HTTP {exc.status_code}: {said}" if exc.status_code else said


#: what follows an answer that no Grafana gives
NOT_GRAFANA: Final = (
    "not Grafana's HTTP API (is the URL Grafana's base URL, such as http://127.0.0.1:3000?)"
)


def _why_not_connected(exc: BaseException) -> str:
    """The system's reason under requests' and urllib3's wrappers (``Connection refused``,
    ``Name or service not known``), or the exception's own text."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if (
            isinstance(e, OSError)
            and e.strerror
            and not type(e).__module__.startswith(("requests", "urllib3"))
        ):
            return e.strerror
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None)]
        todo += [a for a in e.args if isinstance(a, BaseException)]
    return str(exc)


def _step(what: str, call: Callable[[], Any], missing_ok: bool = False) -> Any:
    """Run one API call; a ``PushError`` naming ``what`` when it fails (None for
    Grafana's 404 when ``missing_ok``). Grafana's API answers its errors in JSON: an
    answer in anything else is another server's, said in one line."""
    try:
        return call()
    except GrafanaException as exc:
        if not isinstance(exc.response, dict):
            raise PushError(
                f"{what}: the server answered HTTP {exc.status_code} without JSON: {NOT_GRAFANA}"
            ) from None
        if missing_ok and exc.status_code == 404:
            return None
        raise PushError(f"{what}: Grafana answered {_answer(exc)}") from None
    except requests.ConnectionError as exc:
        raise PushError(f"{what}: cannot connect: {_why_not_connected(exc)}") from None
    except requests.Timeout as exc:
        raise PushError(f"{what}: no answer in time: {_why_not_connected(exc)}") from None
    except ValueError:  # an answer that is not JSON: requests' JSONDecodeError
        raise PushError(f"{what}: the server answered without JSON: {NOT_GRAFANA}") from None
    except OSError as exc:
        raise PushError(f"{what}: {exc}") from None


#: the most read of one answer from Grafana (its answers to a push are a few kB)
MAX_ANSWER_BYTES: Final = 4 * 1024 * 1024
#: redirects followed on the same host (scheme, host and port); one to another host is an
#: error: the data source's token would go with the request
MAX_REDIRECTS: Final = 3


class BoundedSession(requests.Session):
    """A session whose every request ends by ``deadline`` (``time.monotonic``), reads at
    most ``MAX_ANSWER_BYTES`` of an answer, and follows redirects only on its own host.

    requests' own ``timeout`` bounds each read, so a server trickling a byte at a time
    could hold one answer far past the deadline: ``run`` bounds the whole push in time
    (a blocked read cannot be interrupted from here)."""

    def __init__(self, deadline: float, total_s: float) -> None:
        super().__init__()
        self.deadline = deadline
        self.total_s = total_s

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise PushError(f"Grafana did not answer within {self.total_s:g} s (--timeout)")
        return left

    def request(  # type: ignore[override]
        self, method: str, url: str, *args: Any, **kwargs: Any
    ) -> requests.Response:
        kwargs["allow_redirects"] = False
        kwargs["stream"] = True
        for _ in range(MAX_REDIRECTS + 1):
            kwargs["timeout"] = self._left()
            r = super().request(method, url, *args, **kwargs)
            if r.is_redirect:
                target = urllib.parse.urljoin(url, r.headers.get("Location", ""))
                r.close()
                here, there = urllib.parse.urlsplit(url), urllib.parse.urlsplit(target)
                if (here.scheme, here.netloc) != (there.scheme, there.netloc):
                    raise PushError(
                        f"Grafana redirects to {target}, another host: not followed (the "
                        "request carries the credentials and the data source's token)"
                    )
                url = target
                continue
            self._read(r)
            return r
        raise PushError(f"Grafana redirects more than {MAX_REDIRECTS} times")

    def _read(self, r: requests.Response) -> None:
        """Read the answer within the deadline and the size bound, then hand it back as
        requests' own (``r.content``)."""
        body = bytearray()
        try:
            for chunk in r.iter_content(65536):
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise PushError(
                        f"Grafana's answer to {r.request.method} {r.url} is over "
                        f"{MAX_ANSWER_BYTES} bytes: not read further"
                    )
                self._left()
        finally:
            r.close()
        r._content = bytes(body)
        r._content_consumed = True


def connect(url: str, token: str | None, timeout: float = 10.0) -> GrafanaApi:
    """A client for the Grafana at ``url``: a service account token (``Bearer``), or the
    user and password in the URL (``http://admin:admin@grafana:3000``). ``timeout`` is
    for the whole push, every call and answer included."""
    api: GrafanaApi = GrafanaApi.from_url(url, credential=token, timeout=timeout)
    client: Any = api.client
    session = BoundedSession(time.monotonic() + timeout, timeout)
    session.headers.update(client.s.headers)
    client.s = session
    return api


def run(url: str, token: str | None, source: InfluxSource | None, timeout: float) -> list[str]:
    """``push`` to the Grafana at ``url``, all of it within ``timeout`` seconds (a
    ``PushError`` past it), whatever the Grafana does."""
    done: list[str] = []
    failed: list[BaseException] = []

    def work() -> None:
        try:
            done.extend(push(connect(url, token, timeout), source))
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)

    worker = threading.Thread(target=work, name="dashboards-push", daemon=True)
    worker.start()
    worker.join(timeout + 1.0)  # the session's own deadline, and a second for its error
    if worker.is_alive():  # a read blocked on a trickling server; the process ends it
        raise PushError(f"Grafana did not answer within {timeout:g} s (--timeout)")
    if failed:
        raise failed[0]
    return done


def push(api: GrafanaApi, source: InfluxSource | None) -> list[str]:
    """Create or update the data source (unless ``source`` is None), the folder, and every
    dashboard; one line per thing done."""
    done = []
    client: Any = api  # grafana-client's element methods are not annotated
    if source is not None:
        model = datasource_model(source)
        have = _step(
            f"reading data source {INFLUX_UID}",
            lambda: client.datasource.get_datasource_by_uid(INFLUX_UID),
            missing_ok=True,
        )
        if have is None:
            _step(
                f"creating data source {INFLUX_UID}",
                lambda: client.datasource.create_datasource(model),
            )
            done.append(f"data source {INFLUX_UID} created ({source.url}, {source.database})")
        else:
            _step(
                f"updating data source {INFLUX_UID}",
                lambda: client.datasource.update_datasource_by_uid(INFLUX_UID, model),
            )
            done.append(f"data source {INFLUX_UID} updated ({source.url}, {source.database})")
    folder = _step(
        f"reading folder {FOLDER}", lambda: client.folder.get_folder(FOLDER), missing_ok=True
    )
    if folder is None:
        _step(f"creating folder {FOLDER}", lambda: client.folder.create_folder(FOLDER, uid=FOLDER))
        done.append(f"folder {FOLDER} created")
    for name, board in build_all().items():
        body = {
            "dashboard": {**board, "id": None},
            "folderUid": FOLDER,
            "overwrite": True,
            "message": MESSAGE,
        }
        answer = _step(
            f"saving dashboard {board['uid']} ({name})",
            lambda body=body: client.dashboard.update_dashboard(body),  # type: ignore[misc]
        )
        url = answer.get("url", "") if isinstance(answer, dict) else ""
        done.append(f"dashboard {board['uid']} saved in folder {FOLDER} {url}".rstrip())
    return done


__all__ = ["InfluxSource", "PushError", "connect", "datasource_model", "push", "run"]
