"""The kernel XFRM layer: everything the daemon installs in or hears from the kernel.

- `types`: frozen dataclasses (SaSpec, PolicySpec, ChildInstall, events, KernelError)
  and the reqid range the daemon owns (REQID_MIN..REQID_MAX).
- `interface.KernelIPsec`: the abstract API (SAs, reference-counted policies,
  transactional CHILD_SA installs, SPD info, events).
- `netlink.NetlinkKernel`: the real kernel over NETLINK_XFRM (batched, async).
- `fake.FakeKernel`: the in-memory kernel with the same contract.
- `links.KernelLinks`: XFRM interfaces, VTI devices, addresses, routes (rtnetlink).
- `algorithms`: the algorithm names XFRM knows, the key and ICV lengths it takes.
- `capabilities.probe()`: what the running kernel supports, with reasons.
- `messages`/`codec`: XFRM message layouts on pyroute2's classes, encode/decode.
"""
