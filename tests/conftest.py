"""Fixtures shared by several test modules, registered once.

The VM test bed is session-scoped and holds a machine-wide lock: importing it into
each module would make pytest create one per module, and the second would wait
for the first's lock until the session ends.
"""
import signal

from tests.support.vmtestbed import vm_testbed  # noqa: F401

# Started in the background by a non-interactive shell (`bash .ci/run &`, nohup), a
# process begins with SIGINT ignored, and every program it starts inherits that: the
# Ctrl-C tests (ansible's interrupt, halab's own) then see nothing happen and fail
# for the wrong reason (seen: `nohup bash .ci/run &`). Python's own handler is reset
# to the default by exec, so the programs the tests start get SIGINT again too.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
