"""xfrmctl: an IKEv2 keying daemon and Linux IPsec (XFRM) control plane."""

__version__ = "0.1.0"
