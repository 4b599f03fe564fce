#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xfrmctl developers
# Apache License 2.0 (see LICENSE in the xfrmctl repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: proposal
short_description: Manage named xfrmctl proposal sets (IKE, ESP, AH)
version_added: 0.1.0
description:
  - Create, update or delete a named proposal set of an xfrmctl daemon.
  - Connections and children can also carry their proposals inline
    (O(xfrmctl.ipsec.connection#module:ike_proposals)).
options:
  name:
    description: Name of the proposal set.
    type: str
    required: true
  state:
    description: Whether the proposal set exists.
    type: str
    choices: [present, absent]
    default: present
  protocol:
    description: Which negotiation the proposals are for. Required to create.
    type: str
    choices: [ike, esp, ah]
  text:
    description: The proposals in strongSwan keywords, comma separated.
    type: str
extends_documentation_fragment:
  - xfrmctl.ipsec.api
  - xfrmctl.ipsec.attributes
author:
  - xfrmctl developers (@xfrmctl)
"""

EXAMPLES = r"""
- name: Suite B for IKE
  xfrmctl.ipsec.proposal:
    name: suite-b
    protocol: ike
    text: aes256gcm16-prfsha384-ecp384
"""

RETURN = r"""
proposal:
  description: The proposal set as stored (null after state=absent).
  returned: always
  type: dict
  sample: {"id": 1, "name": "suite-b", "protocol": "ike", "text": "aes256gcm16-prfsha384-ecp384"}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xfrmctl.ipsec.plugins.module_utils.api import (
    Resource, api_argument_spec)


class Proposal(Resource):
    path = "/proposals"
    kind = "proposal"
    fields = ("protocol", "text")


def main():
    module = AnsibleModule(
        argument_spec=api_argument_spec(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            protocol=dict(type="str", choices=["ike", "esp", "ah"]),
            text=dict(type="str"),
        ),
        required_if=[("state", "present", ("protocol", "text"))],
        supports_check_mode=True,
    )
    Proposal(module).run()


if __name__ == "__main__":
    main()
