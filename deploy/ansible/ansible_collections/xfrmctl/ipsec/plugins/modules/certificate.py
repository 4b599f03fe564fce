#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xfrmctl developers
# Apache License 2.0 (see LICENSE in the xfrmctl repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: certificate
short_description: Manage the local certificates of an xfrmctl daemon
version_added: 0.1.0
description:
  - Upload, replace or delete a certificate that a connection authenticates with.
  - The private key is a secret (M(xfrmctl.ipsec.secret) with O(xfrmctl.ipsec.secret#module:kind=private_key)),
    referred to here by name.
options:
  name:
    description: Name of the certificate.
    type: str
    required: true
  state:
    description: Whether the certificate exists.
    type: str
    choices: [present, absent]
    default: present
  pem:
    description: The PEM-encoded X.509 certificate. Required to create.
    type: str
  ca:
    description: Name of the CA (M(xfrmctl.ipsec.ca)) that issued it.
    type: str
  key_secret:
    description: Name of the secret holding its private key.
    type: str
extends_documentation_fragment:
  - xfrmctl.ipsec.api
  - xfrmctl.ipsec.attributes
author:
  - xfrmctl developers (@xfrmctl)
"""

EXAMPLES = r"""
- name: The gateway's own certificate
  xfrmctl.ipsec.certificate:
    name: gw1
    pem: "{{ lookup('file', 'pki/gw1.pem') }}"
    ca: corp-root
    key_secret: gw1-key
"""

RETURN = r"""
certificate:
  description: The certificate as stored, with subject, issuer and validity (null after state=absent).
  returned: always
  type: dict
  sample: {"id": 2, "name": "gw1", "subject": "CN=gw1", "issuer": "CN=Corp Root", "ca_id": 1}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xfrmctl.ipsec.plugins.module_utils.api import (
    Resource, api_argument_spec)


class Certificate(Resource):
    path = "/certificates"
    kind = "certificate"
    fields = ("pem",)

    def desired(self):
        wanted = super(Certificate, self).desired()
        p = self.module.params
        if p["ca"] is not None:
            wanted["ca_id"] = self.client.id_of("/cas", p["ca"], "ca")
        if p["key_secret"] is not None:
            wanted["key_secret_id"] = self.client.id_of("/secrets", p["key_secret"], "key_secret")
        return wanted


def main():
    module = AnsibleModule(
        argument_spec=api_argument_spec(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            pem=dict(type="str"),
            ca=dict(type="str"),
            key_secret=dict(type="str", no_log=False),
        ),
        required_if=[("state", "present", ("pem",))],
        supports_check_mode=True,
    )
    Certificate(module).run()


if __name__ == "__main__":
    main()
