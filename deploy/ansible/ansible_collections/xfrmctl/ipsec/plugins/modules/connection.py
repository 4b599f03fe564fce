#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xfrmctl developers
# Apache License 2.0 (see LICENSE in the xfrmctl repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: connection
short_description: Manage xfrmctl IKEv2 connections with their children (CHILD_SAs)
version_added: 0.1.0
description:
  - Create, update or delete an IKEv2 connection of an xfrmctl daemon, together with its
    children (traffic selectors, ESP/AH proposals, route-based interfaces).
  - Only the options given are compared and changed; a running daemon applies the change
    itself (make-before-break).
  - References to the peer, the secret, the certificate and the CA are by name.
  - To bring the tunnel up, down or rekey it use M(xfrmctl.ipsec.sa); to wait for it
    use M(xfrmctl.ipsec.info).
options:
  name:
    description: Name of the connection.
    type: str
    required: true
  state:
    description: Whether the connection exists.
    type: str
    choices: [present, absent]
    default: present
  peer:
    description: Name of a peer (M(xfrmctl.ipsec.peer)) this connection belongs to.
    type: str
  enabled:
    description: Whether the daemon loads the connection.
    type: bool
  local_addrs:
    description: Local addresses IKE uses.
    type: list
    elements: str
  remote_addrs:
    description: Remote gateway addresses (empty accepts any, e.g. road warriors).
    type: list
    elements: str
  local_port:
    description: Local IKE port.
    type: int
  remote_port:
    description: Remote IKE port.
    type: int
  local_id:
    description: Our IKE identity (an address, FQDN, e-mail or DN).
    type: str
  remote_id:
    description: The identity the peer must prove.
    type: str
  auth:
    description: How both ends authenticate.
    type: str
    choices: [psk, pubkey]
  secret:
    description:
      - Name of the secret (M(xfrmctl.ipsec.secret)) holding the PSK (O(auth=psk)) or
        the private key (O(auth=pubkey)).
    type: str
  certificate:
    description: Name of our certificate (O(auth=pubkey)).
    type: str
  ppk_secret:
    description:
      - Name of the secret (kind V(ppk)) holding a postquantum preshared key (RFC 8784);
        give O(ppk_id) with it.
    type: str
  ppk_id:
    description: The PPK_ID of O(ppk_secret).
    type: str
  ppk_required:
    description: Refuse peers that do not use the PPK.
    type: bool
  ca:
    description: Name of the CA that must have signed the peer's certificate.
    type: str
  ike_proposals:
    description: IKE proposals in strongSwan keywords, comma separated.
    type: str
  start_action:
    description: What the daemon does when it loads the connection.
    type: str
    choices: [none, start, trap]
  dpd_delay:
    description: Seconds between dead peer detection checks (0 disables).
    type: int
  dpd_action:
    description: What to do when the peer is dead.
    type: str
    choices: [clear, restart, trap]
  rekey_time:
    description: Seconds until the IKE_SA is rekeyed.
    type: int
  reauth_time:
    description: Seconds until the IKE_SA is reauthenticated (0 disables).
    type: int
  over_time:
    description: Seconds an IKE_SA may live past its rekey time.
    type: int
  fragmentation:
    description: IKEv2 fragmentation (RFC 7383).
    type: str
    choices: ["yes", "no", "accept", "force"]
  encap:
    description: Force UDP encapsulation of ESP.
    type: bool
  mobike:
    description: MOBIKE (RFC 4555); on when left out, as in strongSwan.
    type: bool
  children:
    description:
      - The children (CHILD_SAs) of the connection, by name. Within a child only the
        keys given are compared.
      - Children stored but not listed are deleted when O(purge_children=true).
      - Not set, the children are left as they are.
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the child.
        type: str
        required: true
      local_ts:
        description: Local traffic selectors (prefixes, or V(dynamic)).
        type: list
        elements: str
      remote_ts:
        description: Remote traffic selectors.
        type: list
        elements: str
      mode:
        description: IPsec mode.
        type: str
        choices: [tunnel, transport]
      esp_proposals:
        description: ESP proposals in strongSwan keywords.
        type: str
      ah_proposals:
        description: AH proposals in strongSwan keywords.
        type: str
      interface_kind:
        description: Route-based tunnel interface; unset for policy-based.
        type: str
        choices: [xfrmi, vti]
      interface_name:
        description: Name of the tunnel interface.
        type: str
      if_id:
        description: XFRM interface id.
        type: int
      interface_addresses:
        description: Addresses (with prefix length) put on the tunnel interface.
        type: list
        elements: str
      routes:
        description: Prefixes routed into the tunnel interface.
        type: list
        elements: str
      mtu:
        description: MTU of the tunnel interface.
        type: int
      mark_in:
        description: XFRM mark of inbound SAs and policies.
        type: int
      mark_in_mask:
        description: Mask of O(children[].mark_in).
        type: int
      mark_out:
        description: XFRM mark of outbound SAs and policies.
        type: int
      mark_out_mask:
        description: Mask of O(children[].mark_out).
        type: int
      replay_window:
        description: Anti-replay window in packets.
        type: int
      esn:
        description: Extended sequence numbers.
        type: bool
      rekey_time:
        description: Seconds until the CHILD_SA is rekeyed.
        type: int
      life_time:
        description: Seconds until the CHILD_SA expires.
        type: int
      rekey_bytes:
        description: Bytes until the CHILD_SA is rekeyed (0 disables).
        type: int
      life_bytes:
        description: Bytes until the CHILD_SA expires (0 disables).
        type: int
      rekey_packets:
        description: Packets until the CHILD_SA is rekeyed (0 disables).
        type: int
      life_packets:
        description: Packets until the CHILD_SA expires (0 disables).
        type: int
      tfc_padding:
        description: Traffic flow confidentiality padding in bytes.
        type: int
      mss:
        description:
          - TCP MSS clamping of SYNs through the tunnel, V(auto) (what fits after the
            negotiated ESP overhead), V(off), or the MSS as a number.
        type: raw
      start_action:
        description: What the daemon does with this child when the connection loads.
        type: str
        choices: [none, start, trap]
  purge_children:
    description: Delete the stored children that O(children) does not list.
    type: bool
    default: true
extends_documentation_fragment:
  - xfrmctl.ipsec.api
  - xfrmctl.ipsec.attributes
attributes:
  check_mode:
    description: Predicts the change, children included, without making it.
  diff_mode:
    description: Shows the fields that change, per child.
author:
  - xfrmctl developers (@xfrmctl)
"""

EXAMPLES = r"""
- name: Site-to-site tunnel to the branch office
  xfrmctl.ipsec.connection:
    name: branch1
    local_addrs: [192.0.2.1]
    remote_addrs: [192.0.2.2]
    local_id: gw1.example.net
    remote_id: branch1.example.net
    auth: psk
    secret: branch1-psk
    ike_proposals: aes256gcm16-prfsha384-x25519
    start_action: start
    children:
      - name: lan
        local_ts: [198.51.100.0/24]
        remote_ts: [203.0.113.0/24]
        esp_proposals: aes256gcm16-x25519

- name: Remove it
  xfrmctl.ipsec.connection:
    name: branch1
    state: absent
"""

RETURN = r"""
connection:
  description: The connection as stored, with its C(children); null after state=absent.
  returned: always
  type: dict
  sample:
    id: 1
    name: branch1
    remote_addrs: [192.0.2.2]
    children: [{"id": 1, "name": "lan", "local_ts": ["198.51.100.0/24"]}]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xfrmctl.ipsec.plugins.module_utils.api import (
    Resource, api_argument_spec, normalize)

STARTS = ["none", "start", "trap"]
CHILD_SPEC = dict(
    name=dict(type="str", required=True),
    local_ts=dict(type="list", elements="str"),
    remote_ts=dict(type="list", elements="str"),
    mode=dict(type="str", choices=["tunnel", "transport"]),
    esp_proposals=dict(type="str"),
    ah_proposals=dict(type="str"),
    interface_kind=dict(type="str", choices=["xfrmi", "vti"]),
    interface_name=dict(type="str"),
    if_id=dict(type="int"),
    interface_addresses=dict(type="list", elements="str"),
    routes=dict(type="list", elements="str"),
    mtu=dict(type="int"),
    mark_in=dict(type="int"),
    mark_in_mask=dict(type="int"),
    mark_out=dict(type="int"),
    mark_out_mask=dict(type="int"),
    replay_window=dict(type="int"),
    esn=dict(type="bool"),
    rekey_time=dict(type="int", no_log=False),
    life_time=dict(type="int"),
    rekey_bytes=dict(type="int", no_log=False),
    life_bytes=dict(type="int"),
    rekey_packets=dict(type="int", no_log=False),
    life_packets=dict(type="int"),
    tfc_padding=dict(type="int"),
    mss=dict(type="raw"),
    start_action=dict(type="str", choices=STARTS),
)
REFERENCES = (("peer", "/peers", "peer_id"), ("secret", "/secrets", "secret_id"),
              ("certificate", "/certificates", "certificate_id"), ("ca", "/cas", "ca_id"),
              ("ppk_secret", "/secrets", "ppk_secret_id"))


class Connection(Resource):
    path = "/connections"
    kind = "connection"
    fields = ("enabled", "local_addrs", "remote_addrs", "local_port", "remote_port",
              "local_id", "remote_id", "auth", "ike_proposals", "start_action", "dpd_delay",
              "dpd_action", "rekey_time", "reauth_time", "over_time", "fragmentation",
              "encap", "mobike", "ppk_id", "ppk_required")

    def desired(self):
        wanted = super(Connection, self).desired()
        for option, path, field in REFERENCES:
            if self.module.params[option] is not None:
                wanted[field] = self.client.id_of(path, self.module.params[option], option)
        return wanted

    def after_present(self, obj, check):
        """Reconcile the children; their changes join the connection's diff."""
        wanted = self.module.params["children"]
        stored = []
        if obj.get("id") is not None:
            stored = self.client.list_all("/connections/%s/children" % obj["id"])
        if wanted is None:
            obj["children"] = stored
            return obj
        by_name = dict((c["name"], c) for c in stored)
        result, before, after = [], {}, {}
        for child in wanted:
            spec = dict((k, v) for k, v in child.items() if v is not None and k != "name")
            current = by_name.pop(child["name"], None)
            if current is None:
                after[child["name"]] = spec
                result.append(dict(spec, name=child["name"]) if check else self.client.request(
                    "POST", "/connections/%s/children" % obj["id"], dict(spec, name=child["name"])))
                continue
            delta = dict((k, v) for k, v in spec.items()
                         if normalize(current.get(k), k) != normalize(v, k))
            if delta:
                before[child["name"]] = dict((k, current.get(k)) for k in delta)
                after[child["name"]] = delta
                current = dict(current, **delta) if check else self.client.request(
                    "PATCH", "/children/%s" % current["id"], delta)
            result.append(current)
        for name, current in by_name.items():
            if self.module.params["purge_children"]:
                before[name] = {"state": "present"}
                after[name] = {"state": "absent"}
                if not check:
                    self.client.request("DELETE", "/children/%s" % current["id"])
            else:
                result.append(current)
        if before or after:
            self.changed = True
            if before:
                self.diff_before.setdefault("children", {}).update(before)
            self.diff_after.setdefault("children", {}).update(after)
        obj["children"] = result
        return obj


def main():
    module = AnsibleModule(
        argument_spec=api_argument_spec(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            peer=dict(type="str"),
            enabled=dict(type="bool"),
            local_addrs=dict(type="list", elements="str"),
            remote_addrs=dict(type="list", elements="str"),
            local_port=dict(type="int"),
            remote_port=dict(type="int"),
            local_id=dict(type="str"),
            remote_id=dict(type="str"),
            auth=dict(type="str", choices=["psk", "pubkey"]),
            secret=dict(type="str", no_log=False),
            certificate=dict(type="str"),
            ca=dict(type="str"),
            ppk_secret=dict(type="str", no_log=False),
            ppk_id=dict(type="str"),
            ppk_required=dict(type="bool"),
            ike_proposals=dict(type="str"),
            start_action=dict(type="str", choices=STARTS),
            dpd_delay=dict(type="int"),
            dpd_action=dict(type="str", choices=["clear", "restart", "trap"]),
            rekey_time=dict(type="int", no_log=False),
            reauth_time=dict(type="int"),
            over_time=dict(type="int"),
            fragmentation=dict(type="str", choices=["yes", "no", "accept", "force"]),
            encap=dict(type="bool"),
            mobike=dict(type="bool"),
            children=dict(type="list", elements="dict", options=CHILD_SPEC),
            purge_children=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    Connection(module).run()


if __name__ == "__main__":
    main()
