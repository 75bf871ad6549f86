"""Make permission bits bind a test's modelplane process even when the tests run as root.

Root reads a ``chmod 000`` folder anyway: CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH bypass the
permission bits. ``setpriv --bounding-set`` drops both before exec, so the process is still uid 0
(it owns the test's files and state directory) but ``Permission denied`` is real for it, as for
the unprivileged ``modelplane`` user that systemd runs. Not root: the bits bind already.
"""

from __future__ import annotations

import os
import shutil

import pytest


def permission_bits_bind() -> list[str]:
    """A command prefix under which ``chmod 000`` makes a path unreadable."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without util-linux's setpriv: cannot make a path unreadable")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
