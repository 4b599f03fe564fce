#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xfrmctl developers
# Apache License 2.0 (see LICENSE in the xfrmctl repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: peer
short_description: Manage xfrmctl peers (named remote gateways)
version_added: 0.1.0
description:
  - Create, update or delete a peer of an xfrmctl daemon through its REST API.
  - Only the options given are compared and changed.
options:
  name:
    description: Name of the peer (its identity for idempotence).
    type: str
    required: true
  state:
    description: Whether the peer exists.
    type: str
    choices: [present, absent]
    default: present
  addresses:
    description: IP addresses or host names of the peer.
    type: list
    elements: str
  description:
    description: Free text.
    type: str
extends_documentation_fragment:
  - xfrmctl.ipsec.api
  - xfrmctl.ipsec.attributes
author:
  - xfrmctl developers (@xfrmctl)
"""

EXAMPLES = r"""
- name: The branch office gateway
  xfrmctl.ipsec.peer:
    name: branch1
    addresses: [203.0.113.7]
    description: Branch office 1
"""

RETURN = r"""
peer:
  description: The peer as the API stores it (null after state=absent).
  returned: always
  type: dict
  sample: {"id": 3, "name": "branch1", "addresses": ["203.0.113.7"], "description": ""}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xfrmctl.ipsec.plugins.module_utils.api import (
    Resource, api_argument_spec)


class Peer(Resource):
    path = "/peers"
    kind = "peer"
    fields = ("addresses", "description")


def main():
    module = AnsibleModule(
        argument_spec=api_argument_spec(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            addresses=dict(type="list", elements="str"),
            description=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    Peer(module).run()


if __name__ == "__main__":
    main()
