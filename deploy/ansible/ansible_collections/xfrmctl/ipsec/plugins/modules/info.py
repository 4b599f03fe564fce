#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xfrmctl developers
# Apache License 2.0 (see LICENSE in the xfrmctl repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: info
short_description: Read connections, IKE_SAs, CHILD_SAs and status of an xfrmctl daemon
version_added: 0.1.0
description:
  - Returns the configured connections (with children), the live IKE and CHILD SAs and
    the daemon's status, optionally for one connection only.
  - Meant for C(assert) and C(until) loops, e.g. waiting for a tunnel to come up.
options:
  connection:
    description: Name of a connection; only its objects are returned.
    type: str
  gather:
    description: What to read.
    type: list
    elements: str
    choices: [connections, ike_sas, child_sas, status]
    default: [connections, ike_sas, child_sas, status]
extends_documentation_fragment:
  - xfrmctl.ipsec.api
  - xfrmctl.ipsec.attributes.info_module
author:
  - xfrmctl developers (@xfrmctl)
"""

EXAMPLES = r"""
- name: Wait until the branch tunnel carries traffic
  xfrmctl.ipsec.info:
    connection: branch1
    gather: [child_sas]
  register: ipsec
  until: ipsec.installed_children | length > 0
  retries: 30
  delay: 2

- name: The daemon knows no unmatched peers
  xfrmctl.ipsec.info:
    gather: [status]
  register: st
- ansible.builtin.assert:
    that: st.status.unmatched | length == 0
"""

RETURN = r"""
connections:
  description: Configured connections, each with its C(children).
  returned: when gathered
  type: list
  elements: dict
ike_sas:
  description: Live IKE_SAs (state, addresses, algorithms, times).
  returned: when gathered
  type: list
  elements: dict
child_sas:
  description: Live CHILD_SAs (state, SPIs, traffic selectors, counters; never keys).
  returned: when gathered
  type: list
  elements: dict
installed_children:
  description: Names of the children with an INSTALLED CHILD_SA.
  returned: when child_sas is gathered
  type: list
  elements: str
  sample: [lan]
status:
  description: Daemon status; with O(connection) only that connection's entry in C(connections).
  returned: when gathered
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xfrmctl.ipsec.plugins.module_utils.api import (
    ApiError, Client, api_argument_spec)


def gather(client, name, what):
    result = {}
    conn_id = None
    connections = client.list_all("/connections")
    if name is not None:
        connections = [c for c in connections if c["name"] == name]
        if not connections:
            raise ApiError(404, "no connection called %r exists" % name, "GET", "/connections")
        conn_id = connections[0]["id"]
    query = {"connection_id": conn_id} if conn_id else None
    if "connections" in what:
        for conn in connections:
            conn["children"] = client.list_all("/connections/%s/children" % conn["id"])
        result["connections"] = connections
    if "ike_sas" in what:
        result["ike_sas"] = client.list_all("/ike-sas", query)
    if "child_sas" in what:
        sas = client.list_all("/child-sas", query)
        result["child_sas"] = sas
        result["installed_children"] = sorted(
            set(sa["name"] for sa in sas if sa["state"] == "INSTALLED"))
    if "status" in what:
        status = client.request("GET", "/status")
        if name is not None:
            status["connections"] = [c for c in status["connections"] if c["name"] == name]
        result["status"] = status
    return result


def main():
    module = AnsibleModule(
        argument_spec=api_argument_spec(
            connection=dict(type="str"),
            gather=dict(type="list", elements="str",
                        choices=["connections", "ike_sas", "child_sas", "status"],
                        default=["connections", "ike_sas", "child_sas", "status"]),
        ),
        supports_check_mode=True,
    )
    try:
        result = gather(Client.from_module(module), module.params["connection"],
                        module.params["gather"])
    except ApiError as exc:
        module.fail_json(msg=str(exc), status=exc.status, detail=exc.detail)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
