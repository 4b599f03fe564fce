#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xfrmctl developers
# Apache License 2.0 (see LICENSE in the xfrmctl repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: ca
short_description: Manage the trust anchors (CA certificates) of an xfrmctl daemon
version_added: 0.1.0
description:
  - Upload, replace or delete a CA certificate that xfrmctl trusts for peers' certificates.
options:
  name:
    description: Name of the CA.
    type: str
    required: true
  state:
    description: Whether the CA exists.
    type: str
    choices: [present, absent]
    default: present
  pem:
    description:
      - The PEM-encoded X.509 certificate. Required to create.
      - Compared with the stored one (surrounding whitespace ignored).
    type: str
extends_documentation_fragment:
  - xfrmctl.ipsec.api
  - xfrmctl.ipsec.attributes
author:
  - xfrmctl developers (@xfrmctl)
"""

EXAMPLES = r"""
- name: Trust the company CA
  xfrmctl.ipsec.ca:
    name: corp-root
    pem: "{{ lookup('file', 'pki/corp-root.pem') }}"
"""

RETURN = r"""
ca:
  description: The CA as stored, with its subject and expiry (null after state=absent).
  returned: always
  type: dict
  sample: {"id": 1, "name": "corp-root", "subject": "CN=Corp Root", "not_after": "2030-01-01T00:00:00"}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xfrmctl.ipsec.plugins.module_utils.api import (
    Resource, api_argument_spec)


class Ca(Resource):
    path = "/cas"
    kind = "ca"
    fields = ("pem",)


def main():
    module = AnsibleModule(
        argument_spec=api_argument_spec(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            pem=dict(type="str"),
        ),
        required_if=[("state", "present", ("pem",))],
        supports_check_mode=True,
    )
    Ca(module).run()


if __name__ == "__main__":
    main()
