# -*- coding: utf-8 -*-
# Copyright: xfrmctl developers
# Apache License 2.0 (see LICENSE in the xfrmctl repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """How every module reaches the API: its options, and the action group that lets a
    play set them once (C(module_defaults: {group/xfrmctl.ipsec.api: ...}))."""

    DOCUMENTATION = r"""
options:
  url:
    description:
      - Where the xfrmctl REST API listens, without the C(/api/v1) prefix.
      - V(unix:///run/xfrmctl/api.sock) talks to the daemon's unix socket;
        V(https://gw1.example.net:8463) over TLS.
      - If not set, the environment variable E(XFRMCTL_URL) is used, then
        V(unix:///run/xfrmctl/api.sock).
    type: str
  token:
    description:
      - API bearer token (C(xfrmctl token create)). If not set, E(XFRMCTL_TOKEN) is used.
    type: str
  validate_certs:
    description:
      - Verify the API's TLS certificate. Set to V(false) only on a lab network.
    type: bool
    default: true
  ca_path:
    description:
      - PEM file with the CA that signed the API's TLS certificate.
    type: path
  timeout:
    description:
      - Seconds to wait for one API request.
    type: int
    default: 30
attributes:
  action_group:
    support: full
    description: The connection options can be set once for the group in C(module_defaults).
    membership:
      - xfrmctl.ipsec.api
"""
