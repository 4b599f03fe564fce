#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xfrmctl developers
# Apache License 2.0 (see LICENSE in the xfrmctl repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: secret
short_description: Manage xfrmctl secrets (pre-shared keys, private keys), write-only
version_added: 0.1.0
description:
  - Create, replace or delete a secret. The API never returns a secret's value, so
    this module never reads it back.
  - Idempotence is by O(name) (and O(kind)). An existing secret is left alone unless
    O(force=true), which writes the value again (and always reports a change).
    Rotate a key by setting O(force) in the run that changes it, or by a new O(name).
  - The value never appears in the module's output, its diff or Ansible's logs.
options:
  name:
    description: Name of the secret.
    type: str
    required: true
  state:
    description: Whether the secret exists.
    type: str
    choices: [present, absent]
    default: present
  kind:
    description: What the value is. Required to create; a secret's kind cannot change.
    type: str
    choices: [psk, private_key]
  value:
    description: The pre-shared key or the PEM private key. Required to create.
    type: str
  force:
    description: Write O(value) even though the secret exists.
    type: bool
    default: false
extends_documentation_fragment:
  - xfrmctl.ipsec.api
attributes:
  check_mode:
    support: full
    description: Predicts the change without making it.
  diff_mode:
    support: full
    description: Shows that the secret is created, replaced or deleted, never its value.
author:
  - xfrmctl developers (@xfrmctl)
"""

EXAMPLES = r"""
- name: The pre-shared key of the branch tunnel (from Ansible Vault)
  xfrmctl.ipsec.secret:
    name: branch1-psk
    kind: psk
    value: "{{ vault_branch1_psk }}"

- name: Rotate it
  xfrmctl.ipsec.secret:
    name: branch1-psk
    kind: psk
    value: "{{ vault_branch1_psk_new }}"
    force: true
"""

RETURN = r"""
secret:
  description: The secret's metadata (never its value); null after state=absent.
  returned: always
  type: dict
  sample: {"id": 4, "name": "branch1-psk", "kind": "psk", "updated_at": "2026-01-01T00:00:00"}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xfrmctl.ipsec.plugins.module_utils.api import (
    ApiError, Resource, api_argument_spec)

SHOWN = {"before": "(previous value)", "after": "(new value)"}


class Secret(Resource):
    path = "/secrets"
    kind = "secret"
    fields = ("kind", "value")

    def changes(self, current, wanted):
        if wanted.get("kind") and wanted["kind"] != current["kind"]:
            raise ApiError(422, [{"loc": ["body", "kind"],
                                  "msg": "secret %s is a %s; delete it to store a %s"
                                         % (current["name"], current["kind"], wanted["kind"])}],
                           "PUT", self.item_path(current))
        if self.module.params["force"]:
            return {"value": wanted["value"]}
        return {}

    def update(self, current, changes):
        return self.client.request("PUT", self.item_path(current), {"value": changes["value"]})

    def _run(self):
        result = super(Secret, self)._run()
        for side in ("before", "after"):  # the diff says a value is written, not which
            shown = result.get("diff", {}).get(side, {})
            if "value" in shown:
                shown["value"] = SHOWN[side]
        if isinstance(result.get("secret"), dict):
            result["secret"].pop("value", None)
        return result


def main():
    module = AnsibleModule(
        argument_spec=api_argument_spec(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            kind=dict(type="str", choices=["psk", "private_key"]),
            value=dict(type="str", no_log=True),
            force=dict(type="bool", default=False),
        ),
        required_if=[("state", "present", ("kind", "value"))],
        supports_check_mode=True,
    )
    Secret(module).run()


if __name__ == "__main__":
    main()
