#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xfrmctl developers
# Apache License 2.0 (see LICENSE in the xfrmctl repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: sa
short_description: Bring an xfrmctl connection up or down, or rekey it
version_added: 0.1.0
description:
  - V(up) initiates the connection unless one of its CHILD_SAs is installed already;
    V(down) terminates its IKE_SAs if there are any; V(rekeyed) rekeys them (always a
    change).
  - With O(wait) the module returns when the daemon reached the state, and fails with
    the daemon's reason (from its status) when it did not within O(wait_timeout).
options:
  connection:
    description: Name of the connection.
    type: str
    required: true
  child:
    description: With O(state=up), initiate only this child.
    type: str
  state:
    description: The state to reach.
    type: str
    choices: [up, down, rekeyed]
    default: up
  wait:
    description: Wait until the state is reached.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait.
    type: int
    default: 60
extends_documentation_fragment:
  - xfrmctl.ipsec.api
  - xfrmctl.ipsec.attributes
attributes:
  check_mode:
    description: Reports whether an action would be sent, sends none.
  diff_mode:
    description: Shows the connection's state before and after.
author:
  - xfrmctl developers (@xfrmctl)
"""

EXAMPLES = r"""
- name: Bring the branch tunnel up and wait for its CHILD_SA
  xfrmctl.ipsec.sa:
    connection: branch1
    state: up

- name: Rekey it now
  xfrmctl.ipsec.sa:
    connection: branch1
    state: rekeyed
"""

RETURN = r"""
ike_sas:
  description: The connection's IKE_SAs after the action.
  returned: always
  type: list
  elements: dict
child_sas:
  description: The connection's CHILD_SAs after the action.
  returned: always
  type: list
  elements: dict
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xfrmctl.ipsec.plugins.module_utils.api import (
    ApiError, Client, api_argument_spec)


class Sa(object):
    def __init__(self, module):
        self.module = module
        self.client = Client.from_module(module)
        p = module.params
        self.conn = self.client.find("/connections", p["connection"])
        if self.conn is None:
            raise ApiError(404, "no connection called %r exists" % p["connection"],
                           "GET", "/connections")
        self.query = {"connection_id": self.conn["id"]}

    def live(self):
        return (self.client.list_all("/ike-sas", self.query),
                self.client.list_all("/child-sas", self.query))

    def is_up(self, child_sas):
        child = self.module.params["child"]
        return any(sa["state"] == "INSTALLED" and (child is None or sa["name"] == child)
                   for sa in child_sas)

    def reached(self, state):
        ike_sas, child_sas = self.live()
        if state == "up":
            return self.is_up(child_sas)
        if state == "down":
            return not ike_sas
        return True

    def act(self, state):
        path = "/connections/%s/" % self.conn["id"]
        if state == "up":
            query = None
            if self.module.params["child"] is not None:
                child = self.client.find(path + "children", self.module.params["child"])
                if child is None:
                    raise ApiError(404, "connection %s has no child %r" % (
                        self.conn["name"], self.module.params["child"]), "GET", path)
                query = {"child_id": child["id"]}
            self.client.request("POST", path + "initiate", query=query)
        elif state == "down":
            self.client.request("POST", path + "terminate")
        else:
            self.client.request("POST", path + "rekey")

    def wait(self, state):
        deadline = time.time() + self.module.params["wait_timeout"]
        while not self.reached(state):
            if time.time() > deadline:
                status = self.client.request("GET", "/status")
                mine = [c for c in status["connections"] if c["id"] == self.conn["id"]]
                self.module.fail_json(
                    msg="connection %s did not reach %s within %ss" % (
                        self.conn["name"], state, self.module.params["wait_timeout"]),
                    status=mine[0] if mine else None)
            time.sleep(1)

    def run(self):
        state = self.module.params["state"]
        before = "up" if self.reached("up") else "down"
        changed = state == "rekeyed" or not self.reached(state)
        if changed and not self.module.check_mode:
            self.act(state)
            if self.module.params["wait"] and state != "rekeyed":
                self.wait(state)
        ike_sas, child_sas = self.live()
        result = dict(changed=changed, ike_sas=ike_sas, child_sas=child_sas)
        if self.module._diff:
            result["diff"] = {"before": {"state": before},
                              "after": {"state": state if changed else before}}
        return result


def main():
    module = AnsibleModule(
        argument_spec=api_argument_spec(
            connection=dict(type="str", required=True),
            child=dict(type="str"),
            state=dict(type="str", choices=["up", "down", "rekeyed"], default="up"),
            wait=dict(type="bool", default=True),
            wait_timeout=dict(type="int", default=60),
        ),
        supports_check_mode=True,
    )
    try:
        result = Sa(module).run()
    except ApiError as exc:
        module.fail_json(msg=str(exc), status=exc.status, detail=exc.detail)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
