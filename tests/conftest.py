"""Fixtures shared by several test modules, registered once.

The VM test bed is session-scoped and holds a machine-wide lock: importing it into
each module would make pytest create one per module, and the second would wait
for the first's lock until the session ends.
"""
from tests.support.vmtestbed import vm_testbed  # noqa: F401
