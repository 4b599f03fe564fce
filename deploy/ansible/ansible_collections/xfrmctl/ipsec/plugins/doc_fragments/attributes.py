# -*- coding: utf-8 -*-
# Copyright: xfrmctl developers
# Apache License 2.0 (see LICENSE in the xfrmctl repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Check mode and diff, as community.general.attributes documents them: a module
    uses one of these and may override a description in its own C(attributes:) (the
    module's keys win when the fragment is merged)."""

    # A module that creates, changes or deletes objects of the API
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    support: full
    description: Predicts the change without making it.
  diff_mode:
    support: full
    description: Shows the fields that change.
"""

    # A module that only reads
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    description: Reads only; runs the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is nothing to diff.
"""
