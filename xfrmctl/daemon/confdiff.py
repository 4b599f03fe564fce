"""What a configuration change asks of a running connection (pure; see Controller.reload).

Applying a change does the least that reaches the new state, make-before-break:
- a setting only this daemon reads (DPD, start/close action, lifetimes of future SAs,
  a description) is taken as it is: nothing is negotiated;
- a child added to a connection that is up is a CREATE_CHILD_SA, a removed one a
  CHILD_SA delete;
- a child whose negotiated or installed properties change (selectors, proposals, mode,
  marks, interface ...) is replaced: a new CHILD_SA first, the old one deleted after;
- new IKE proposals alone are an IKE_SA rekey (RFC 7296 2.18, which may pick other
  algorithms): the CHILD_SAs move to the new IKE_SA untouched;
- any other IKE-level change (addresses, identities, authentication ...) is a
  reauthentication (RFC 7296 2.8.3): a new IKE_SA with its children, then the old one
  is deleted. So is new content in a credential file the configuration names by path
  (a psk_file rewritten in place): the caller compares digests of what it loaded;
- a route-based child whose interface settings change names it in `links_changed`: the
  new interface is made before the new CHILD_SA moves onto it, the old one removed once
  no CHILD_SA uses it (Controller._sync_links).
"""

from __future__ import annotations

from dataclasses import dataclass

from .conf import ChildConf, ConnectionConf

# ConnectionConf fields that only this daemon reads: a change renegotiates nothing.
CONNECTION_LOCAL = frozenset({
    "id", "description", "start_action", "dpd_delay", "dpd_action", "close_action",
    "rekey_time", "reauth_time", "over_time", "children",
    # revocation applies to the next authentication (as strongSwan: no reauthentication
    # when a CRL changes; the daemon re-reads CRL files on every reload)
    "crl", "crl_pem", "revocation",
})
# ConnectionConf fields that an IKE_SA rekey brings in (no reauthentication needed).
IKE_REKEY = frozenset({"ike_proposals"})
# ChildConf fields that only apply to CHILD_SAs made from now on (the next rekey).
CHILD_LOCAL = frozenset({
    "id", "description", "start_action", "rekey_time", "life_time", "rekey_bytes",
    "life_bytes", "rekey_packets", "life_packets",
})
# ChildConf fields that make up a route-based child's interface (XFRM interface or VTI).
CHILD_LINK = frozenset({
    "interface_kind", "interface_name", "if_id", "interface_addresses", "routes", "mtu",
    "mark_in", "mark_out",
})


@dataclass(frozen=True, slots=True)
class ConnectionDiff:
    """The change of one connection between two configurations."""

    name: str
    added: bool = False  # a new connection
    removed: bool = False  # gone from the configuration
    reauth: bool = False  # IKE-level change: a new IKE_SA replaces the running one
    ike_rekey: bool = False  # new IKE proposals only: rekey the IKE_SA with them
    children_added: tuple[str, ...] = ()
    children_removed: tuple[str, ...] = ()
    children_replaced: tuple[str, ...] = ()  # a new CHILD_SA, then the old one deleted
    links_changed: tuple[str, ...] = ()  # children whose interface is made anew
    credentials_changed: bool = False  # a credential file's content (part of `reauth`)
    local_fields: tuple[str, ...] = ()  # changed settings that negotiate nothing

    @property
    def negotiates(self) -> bool:
        """Whether a running IKE_SA has anything to exchange with its peer."""
        return self.reauth or self.ike_rekey or bool(self.children_added or self.children_removed
                                   or self.children_replaced)


def _changed(old: object, new: object, fields: object) -> list[str]:
    return [f for f in fields  # type: ignore[attr-defined]
            if getattr(old, f, None) != getattr(new, f, None)]


def diff_child(old: ChildConf, new: ChildConf) -> bool:
    """Whether a child's running CHILD_SAs must be replaced (False: only local fields)."""
    fields = set(ChildConf.model_fields) | set(type(new).model_fields)
    return bool(set(_changed(old, new, sorted(fields))) - CHILD_LOCAL)


def link_changed(old: ChildConf, new: ChildConf) -> bool:
    """Whether a child's interface must be made anew (or made, or removed)."""
    return bool(set(_changed(old, new, sorted(CHILD_LINK))))


def diff_connection(name: str, old: ConnectionConf | None, new: ConnectionConf | None, *,
                    credentials_changed: bool = False) -> ConnectionDiff:
    """`credentials_changed`: a credential file named by path has new content (the
    caller compares digests; the configurations themselves only hold the paths)."""
    if old is None:
        return ConnectionDiff(name, added=new is not None)
    if new is None:
        return ConnectionDiff(name, removed=True)
    fields = sorted(set(ConnectionConf.model_fields) | set(type(new).model_fields))
    changed = _changed(old, new, fields)
    ike_level = set(changed) - CONNECTION_LOCAL
    reauth = bool(ike_level - IKE_REKEY) or credentials_changed
    children_added = tuple(sorted(set(new.children) - set(old.children)))
    children_removed = tuple(sorted(set(old.children) - set(new.children)))
    replaced = tuple(sorted(n for n in set(old.children) & set(new.children)
                            if diff_child(old.children[n], new.children[n])))
    links = tuple(sorted(n for n in set(old.children) & set(new.children)
                         if link_changed(old.children[n], new.children[n])))
    local = tuple(f for f in changed if f in CONNECTION_LOCAL and f != "children")
    return ConnectionDiff(name, reauth=reauth, ike_rekey=bool(ike_level) and not reauth,
                          children_added=children_added,
                          children_removed=children_removed, children_replaced=replaced,
                          links_changed=links, credentials_changed=credentials_changed,
                          local_fields=local)
