# -*- coding: utf-8 -*-
# Copyright: xfrmctl developers
# Apache License 2.0 (see LICENSE in the xfrmctl repository)
"""The xfrmctl REST API client and the resource base class every module is made of.

A module describes one resource (its API path and the options that are fields of it);
`Resource.run()` then reads the current object by name, compares the fields the user
gave, and creates, updates or deletes it, honouring check mode and producing a diff.
Only what Ansible ships is used: `ansible.module_utils.urls` (also for the unix socket).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
import os
import socket

from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.six.moves.urllib.parse import quote, urlencode
from ansible.module_utils.urls import open_url
from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError

API_PREFIX = "/api/v1"
DEFAULT_URL = "unix:///run/xfrmctl/api.sock"
PAGE = 500

API_ARGUMENT_SPEC = dict(
    url=dict(type="str"),
    token=dict(type="str", no_log=True),
    validate_certs=dict(type="bool", default=True),
    ca_path=dict(type="path"),
    timeout=dict(type="int", default=30),
)


def api_argument_spec(**options):
    """The connection options every module takes, plus the module's own."""
    spec = dict(API_ARGUMENT_SPEC)
    spec.update(options)
    return spec


class ApiError(Exception):
    """A non-2xx answer: the status and the API's message (422: each field named)."""

    def __init__(self, status, detail, method, path):
        self.status = status
        self.detail = detail
        super(ApiError, self).__init__("%s %s: HTTP %s: %s" % (method, path, status,
                                                               describe(detail)))


def describe(detail):
    """One sentence from an error body: FastAPI's 422 list becomes 'field: message; ...'."""
    if isinstance(detail, dict) and "detail" in detail:
        detail = detail["detail"]
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = [str(p) for p in item.get("loc", []) if p not in ("body", "query", "path")]
                parts.append("%s: %s" % (".".join(loc) or "request", item.get("msg", item)))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return to_text(detail)


class Client(object):
    """Requests against /api/v1 over TCP/TLS or the daemon's unix socket."""

    def __init__(self, url=None, token=None, validate_certs=True, ca_path=None, timeout=30):
        url = url or os.environ.get("XFRMCTL_URL") or DEFAULT_URL
        self.unix_socket = None
        if url.startswith("unix://"):
            self.unix_socket = url[len("unix://"):]
            url = "http://localhost"
        self.base = url.rstrip("/") + API_PREFIX
        self.token = token or os.environ.get("XFRMCTL_TOKEN")
        self.validate_certs = validate_certs
        self.ca_path = ca_path
        self.timeout = timeout

    @classmethod
    def from_module(cls, module):
        p = module.params
        return cls(p["url"], p["token"], p["validate_certs"], p["ca_path"], p["timeout"])

    def request(self, method, path, body=None, query=None):
        """The decoded JSON answer (None for 204); ApiError for any other status."""
        url = self.base + path
        if query:
            url += "?" + urlencode(query)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            resp = open_url(url, method=method, data=data, headers=headers,
                            validate_certs=self.validate_certs, ca_path=self.ca_path,
                            timeout=self.timeout, unix_socket=self.unix_socket,
                            follow_redirects="none")
            raw = resp.read()
        except HTTPError as exc:
            raw = exc.read() if hasattr(exc, "read") else b""
            raise ApiError(exc.code, _decode(raw) or exc.reason, method, path)
        except URLError as exc:
            if isinstance(exc.reason, socket.timeout):
                raise self._timed_out(method, path)
            where = self.unix_socket or self.base
            raise ApiError(None, "cannot reach the xfrmctl API at %s (%s); is the daemon "
                                 "running with --api?" % (where, exc.reason), method, path)
        except socket.timeout:  # the answer (not the connection) took too long
            raise self._timed_out(method, path)
        return _decode(raw)

    def _timed_out(self, method, path):
        return ApiError(None, "the xfrmctl API at %s did not answer within %s seconds; "
                              "the change may still be applied: check the daemon, then "
                              "run again or raise the option timeout"
                        % (self.unix_socket or self.base, self.timeout), method, path)

    def list_all(self, path, query=None):
        """Every item of a paged list."""
        items, offset = [], 0
        while True:
            params = dict(query or {}, limit=PAGE, offset=offset)
            page = self.request("GET", path, query=params)
            items.extend(page["data"])
            offset += len(page["data"])
            if not page["data"] or offset >= page["count"]:
                return items

    def find(self, path, name):
        """The object of a list called `name`, or None."""
        for item in self.list_all(path):
            if item.get("name") == name:
                return item
        return None

    def id_of(self, path, name, option):
        """Resolve a reference by name; a missing one is the user's mistake, said so."""
        item = self.find(path, name)
        if item is None:
            raise ApiError(422, [{"loc": ["body", option],
                                  "msg": "%s %r does not exist" % (option, name)}],
                           "GET", path)
        return item["id"]


def _decode(raw):
    if not raw:
        return None
    text = to_text(raw, errors="surrogate_or_strict")
    try:
        return json.loads(text)
    except ValueError:
        return text


def subset(current, wanted):
    """The fields of `current` that `wanted` names (for before/after and the diff)."""
    return dict((k, current.get(k)) for k in wanted)


def normalize(value, key=None):
    """A value in the form the API stores it, so that equal settings compare equal.

    The API canonicalizes addresses and prefixes (2001:DB8::0001 is 2001:db8::1, a bare
    address in a selector is a /32); proposals are compared keyword by keyword; PEM text
    without surrounding whitespace.
    """
    if isinstance(value, list):
        return [normalize(v, key) for v in value]
    if not isinstance(value, str):
        return value
    value = value.strip()
    if key is not None and key.endswith("proposals"):
        return [p.strip().lower() for p in value.split(",")]
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        return value
    if iface.network.prefixlen == iface.max_prefixlen:
        return str(iface.ip)
    return str(iface)


class Resource(object):
    """Read, compare, create, update, delete one named object of an API collection.

    Subclasses set `path` (e.g. "/peers") and `fields` (options sent as they are), and
    may override `desired()` (to resolve references), `create()`, `update()`,
    `delete()` and `after_present()` (e.g. connection children).
    """

    path = ""
    fields = ()
    kind = "object"

    def __init__(self, module, client=None):
        self.module = module
        self.client = client or Client.from_module(module)
        self.changed = False
        self.diff_before = {}
        self.diff_after = {}

    # --- what the user wants --------------------------------------------------------
    def desired(self):
        """The fields the user set (None: leave the stored value alone)."""
        p = self.module.params
        return dict((f, p[f]) for f in self.fields if p.get(f) is not None)

    def changes(self, current, wanted):
        return dict((k, v) for k, v in wanted.items()
                    if normalize(current.get(k), k) != normalize(v, k))

    # --- API calls (skipped in check mode by run()) ---------------------------------
    def item_path(self, current):
        return "%s/%s" % (self.path, quote(str(current["id"])))

    def create(self, wanted):
        body = dict(wanted, name=self.module.params["name"])
        return self.client.request("POST", self.path, body)

    def update(self, current, changes):
        return self.client.request("PATCH", self.item_path(current), changes)

    def delete(self, current):
        self.client.request("DELETE", self.item_path(current))

    def read(self):
        return self.client.find(self.path, self.module.params["name"])

    def after_present(self, obj, check):
        """Hook for dependent objects (children of a connection); returns obj."""
        return obj

    def result_of(self, obj):
        return obj

    # --- the state machine ----------------------------------------------------------
    def run(self):
        try:
            result = self._run()
        except ApiError as exc:
            self.module.fail_json(msg=str(exc), status=exc.status, detail=exc.detail)
        self.module.exit_json(**result)

    def _run(self):
        check = self.module.check_mode
        name = self.module.params["name"]
        current = self.read()
        obj = current
        if self.module.params["state"] == "absent":
            if current is not None:
                self.changed = True
                self.diff_before = {"name": name, "state": "present"}
                self.diff_after = {"name": name, "state": "absent"}
                if not check:
                    self.delete(current)
            obj = None
        else:
            wanted = self.desired()
            if current is None:
                self.changed = True
                self.diff_before = {"state": "absent"}
                self.diff_after = dict(wanted, name=name)
                obj = dict(wanted, name=name) if check else self.create(wanted)
            else:
                delta = self.changes(current, wanted)
                if delta:
                    self.changed = True
                    self.diff_before = subset(current, delta)
                    self.diff_after = dict(delta)
                    obj = dict(current, **delta) if check else self.update(current, delta)
            obj = self.after_present(obj, check)
        result = {"changed": self.changed, self.kind: self.result_of(obj)}
        if self.module._diff:
            result["diff"] = {"before": self.diff_before, "after": self.diff_after,
                              "before_header": "%s %s" % (self.kind, name),
                              "after_header": "%s %s" % (self.kind, name)}
        return result
