#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xfrmctl developers
# Apache License 2.0 (see LICENSE in the xfrmctl repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: token
short_description: Manage xfrmctl API tokens
version_added: 0.1.0
description:
  - Create or revoke a bearer token of the xfrmctl API.
  - The token's value is returned once, by the run that creates it; register it and
    store it (e.g. in Ansible Vault). Use C(no_log) on that task.
  - Tokens cannot be edited, and a revoked token keeps its name. When O(scopes) or
    O(expires_at) differ from the stored token the module fails and says so. Revoke it
    (O(state=absent)) and create a token under a new name.
options:
  name:
    description: Name of the token.
    type: str
    required: true
  state:
    description: V(present) creates the token, V(absent) revokes it.
    type: str
    choices: [present, absent]
    default: present
  scopes:
    description: What the token may do. Required to create.
    type: list
    elements: str
    choices: [read, operate, admin]
  expires_at:
    description: When the token stops working (ISO 8601 with a time zone).
    type: str
extends_documentation_fragment:
  - xfrmctl.ipsec.api
  - xfrmctl.ipsec.attributes
attributes:
  diff_mode:
    description: Shows the token created or revoked.
author:
  - xfrmctl developers (@xfrmctl)
"""

EXAMPLES = r"""
- name: A read-only token for monitoring
  xfrmctl.ipsec.token:
    name: prometheus
    scopes: [read]
  register: monitoring
  no_log: true
"""

RETURN = r"""
token:
  description: The token's metadata; null after state=absent.
  returned: always
  type: dict
  sample: {"id": 2, "name": "prometheus", "scopes": ["read"], "prefix": "xfr_ab12"}
value:
  description: The bearer token itself, only when this run created it.
  returned: when created
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xfrmctl.ipsec.plugins.module_utils.api import (
    ApiError, Resource, api_argument_spec)


class Token(Resource):
    path = "/tokens"
    kind = "token"
    fields = ("scopes", "expires_at")

    def __init__(self, module):
        super(Token, self).__init__(module)
        self.value = None

    def read(self):
        for item in self.client.list_all(self.path):
            if item["name"] == self.module.params["name"] and not item.get("revoked_at"):
                return item
        return None

    def changes(self, current, wanted):
        delta = {}
        if "scopes" in wanted and sorted(wanted["scopes"]) != sorted(current["scopes"]):
            delta["scopes"] = sorted(wanted["scopes"])
        if "expires_at" in wanted and wanted["expires_at"] != current.get("expires_at"):
            delta["expires_at"] = wanted["expires_at"]
        if delta:
            raise ApiError(422, [{"loc": ["body", sorted(delta)[0]],
                                  "msg": "token %s cannot be edited; revoke it (state=absent) "
                                         "and create one under a new name" % current["name"]}],
                           "PATCH", self.item_path(current))
        return delta

    def create(self, wanted):
        created = super(Token, self).create(wanted)
        self.value = created.pop("token", None)
        return created

    def _run(self):
        result = super(Token, self)._run()
        if self.value is not None:
            result["value"] = self.value
        return result


def main():
    module = AnsibleModule(
        argument_spec=api_argument_spec(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            scopes=dict(type="list", elements="str", choices=["read", "operate", "admin"]),
            expires_at=dict(type="str"),
        ),
        required_if=[("state", "present", ("scopes",))],
        supports_check_mode=True,
    )
    Token(module).run()


if __name__ == "__main__":
    main()
