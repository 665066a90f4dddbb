"""Hostile front-ends against the v2 back-end core: every malformed input,
generated from the spec, ends in a protocol error (or a refused handshake),
never in another exception, and leaves the dispatcher state, the stored
replies and every descriptor accounted for.  scripts/fuzz-daemon runs the
same generator at 10^5 inputs and over real sockets."""

from __future__ import annotations

import random

from sdeid.testing.fuzz2 import malformed, reference_backend, replies_digest, run_case

CASES = 5000


def test_malformed_inputs_are_protocol_errors_and_change_nothing() -> None:
    backend, fe, snap = reference_backend()
    digest = replies_digest(backend)
    rng = random.Random(20261201)
    rules: dict[str, int] = {}
    for i in range(CASES):
        case = malformed(rng, fe)
        out = run_case(backend, fe, case)
        assert out.other is None, f"case {i} ({case.rule}): {out.other!r}"
        assert out.protocol_error or out.refused_hello, f"case {i} ({case.rule}) accepted"
        assert out.leaked_fds == [], f"case {i} ({case.rule}) leaked {out.leaked_fds}"
        assert backend.dispatcher is not None
        assert backend.dispatcher.snapshot() == snap, f"case {i} ({case.rule}) changed state"
        assert replies_digest(backend) == digest
        rules[case.rule] = rules.get(case.rule, 0) + 1
    # Every rule of the generator was exercised.
    assert len(rules) >= 18, sorted(rules)


def test_the_fuzzer_against_a_real_daemon_process() -> None:
    """scripts/fuzz-daemon, sized for CI: 2000 cases in process, 100 real
    connections to one `sdeid --protocol 2`, each dropped with a logged
    reason, the daemon up and its state intact at the end."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "scripts" / "fuzz-daemon"), "--cases",
                        "2000", "--seed", "7"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 violations" in r.stdout and "state intact" in r.stdout
