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
    this module never reads it back. Idempotence is by O(name) and O(version).
  - With O(version), the stored secret's version is compared. The same version is no
    change; another version (or none stored) writes O(value) and the new version. Rotate
    a key by changing the value and its version together.
  - Without O(version), an existing secret is left alone unless O(force=true), which
    writes the value again (and always reports a change); the stored version is then
    cleared, since it no longer describes the value.
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
    choices: [psk, private_key, ppk]
  value:
    description: The pre-shared key or the PEM private key. Required with O(state=present).
    type: str
  version:
    description:
      - Your label for O(value), stored with it. A string, or an integer taken as its
        decimal text. 1 to 64 characters of C(A-Z a-z 0-9 _ . + - :), starting with a
        letter or digit. For example V(3) or V(2026-12).
      - When it differs from the stored secret's version the value is written.
    type: raw
  force:
    description: Write O(value) even though the secret exists with this O(version).
    type: bool
    default: false
extends_documentation_fragment:
  - xfrmctl.ipsec.api
  - xfrmctl.ipsec.attributes
attributes:
  diff_mode:
    description: Shows the version change and that the value is written, never the value.
author:
  - xfrmctl developers (@xfrmctl)
"""

EXAMPLES = r"""
- name: The pre-shared key of the branch tunnel (from Ansible Vault), version 1
  xfrmctl.ipsec.secret:
    name: branch1-psk
    kind: psk
    value: "{{ vault_branch1_psk }}"
    version: 1

- name: Rotate it (a new value with a new version; the next runs leave it alone)
  xfrmctl.ipsec.secret:
    name: branch1-psk
    kind: psk
    value: "{{ vault_branch1_psk_2 }}"
    version: 2

- name: Write the value again whatever is stored
  xfrmctl.ipsec.secret:
    name: branch1-psk
    kind: psk
    value: "{{ vault_branch1_psk_2 }}"
    version: 2
    force: true
"""

RETURN = r"""
secret:
  description: The secret's metadata (never its value); null after state=absent.
  returned: always
  type: dict
  sample: {"id": 4, "name": "branch1-psk", "kind": "psk", "version": "2",
           "updated_at": "2026-01-01T00:00:00"}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.six import integer_types, string_types
from ansible_collections.xfrmctl.ipsec.plugins.module_utils.api import (
    ApiError, Resource, api_argument_spec)

SHOWN = {"before": "(previous value)", "after": "(new value)"}


def version_text(version):
    """The version as the API stores it: text; an integer is its decimal text."""
    if version is None or isinstance(version, string_types):
        return version
    if isinstance(version, integer_types) and not isinstance(version, bool):
        return str(version)
    raise ValueError("version must be text or an integer, not %s %r (quote it)"
                     % (type(version).__name__, version))


class Secret(Resource):
    path = "/secrets"
    kind = "secret"
    fields = ("kind", "value", "version")

    def changes(self, current, wanted):
        """The value is written when forced or when the version differs; a secret that
        exists is otherwise left alone (its value cannot be compared)."""
        if wanted.get("kind") and wanted["kind"] != current["kind"]:
            raise ApiError(422, [{"loc": ["body", "kind"],
                                  "msg": "secret %s is a %s; delete it to store a %s"
                                         % (current["name"], current["kind"], wanted["kind"])}],
                           "PUT", self.item_path(current))
        version = wanted.get("version")
        new_version = version is not None and version != current.get("version")
        if not (self.module.params["force"] or new_version):
            return {}
        delta = {"value": wanted["value"]}
        if version != current.get("version"):  # forced without a version: cleared
            delta["version"] = version
        return delta

    def update(self, current, changes):
        return self.client.request("PUT", self.item_path(current), {
            "value": changes["value"], "version": self.module.params["version"]})

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
            kind=dict(type="str", choices=["psk", "private_key", "ppk"]),
            value=dict(type="str", no_log=True),
            version=dict(type="raw"),
            force=dict(type="bool", default=False),
        ),
        required_if=[("state", "present", ("kind", "value"))],
        supports_check_mode=True,
    )
    try:
        module.params["version"] = version_text(module.params["version"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    Secret(module).run()


if __name__ == "__main__":
    main()
