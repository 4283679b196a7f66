"""Failover drills: inject a fault, probe every access path, measure, explain, restore.

Shaped like a chaostoolkit experiment: steady-state hypothesis (every access
path answers, nothing injected) -> method (one fault) -> rollback (always
restore) -> a JSON journal -> reports rendered from the journal only.

    faults.py    what each fault does and how it is undone; refusals (quorum)
    expect.py    pure: what should happen on every access path, and why
    prober.py    the long-lived probe worker that runs inside a node's namespace
    engine.py    one drill: steady state, probes, inject, observe, restore, verdict
    verdict.py   pure: classify what was measured and compare with the expectation
    journal.py   the JSON journal in <lab>/drills/<id>.json
    report.py    terminal summary and the self-contained HTML report
    runbook.py   a scenario's `drills:` played in order (workshop mode)
    cli.py       `halab drill ...`
"""
