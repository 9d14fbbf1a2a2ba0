"""What the bench check scripts share (smoke_check, socket_check, tc_cpu_check, report_check):
expect() records and prints a failed check, verdict() prints the summary and gives the exit
code, close() compares two floats relatively."""

failures = []


def expect(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def close(a, b, rel=1e-9):
    return a is not None and b is not None and abs(a - b) <= rel * max(abs(a), abs(b), 1e-30)


def verdict():
    """0 when every check passed, else 1, after saying so."""
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("all checks passed")
    return 0
