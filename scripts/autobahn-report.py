#!/usr/bin/env python3
"""Judge an Autobahn|Testsuite fuzzingclient report (used by scripts/autobahn.sh).

usage: autobahn-report.py INDEX_JSON [--agent NAME] [--expected N] [--details N] [--ok-only]

Without --agent the report must hold exactly one agent, which is judged.

Passes (exit 0) only when the report holds at least N cases for the agent and
every case's `behavior` AND `behaviorClose` is OK or INFORMATIONAL. Anything
else (NON-STRICT, FAILED, UNIMPLEMENTED, WRONG CODE, missing field, ...) is a
failure (exit 1). With --ok-only, INFORMATIONAL fails too. A missing or unreadable report
exits 2.
"""

import argparse
import collections
import json
import os
import sys

PASSING = ("OK", "INFORMATIONAL")


def case_key(case_id):
    return tuple(int(p) if p.isdigit() else p for p in case_id.split("."))


def one_line(value, limit=300):
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index", help="path to <outdir>/index.json")
    ap.add_argument("--agent", help="agent to judge (default: the report's only agent)")
    ap.add_argument("--expected", type=int, default=1,
                    help="minimum number of cases the report must hold")
    ap.add_argument("--details", type=int, default=20,
                    help="print result/resultClose of at most this many failing cases")
    ap.add_argument("--ok-only", action="store_true",
                    help="strict: every case must be OK (INFORMATIONAL fails)")
    args = ap.parse_args()
    global PASSING
    if args.ok_only:
        PASSING = ("OK",)

    try:
        with open(args.index) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print("autobahn-report: cannot read %s: %s" % (args.index, e))
        return 2
    if args.agent is None and len(index) == 1:
        args.agent = next(iter(index))
    if args.agent not in index:
        print("autobahn-report: agent %r not in %s (agents: %s)"
              % (args.agent, args.index, ", ".join(sorted(index)) or "none"))
        return 2

    cases = index[args.agent]
    outdir = os.path.dirname(os.path.abspath(args.index))
    by_behavior = collections.Counter()
    by_close = collections.Counter()
    failing = []
    for case_id in sorted(cases, key=case_key):
        entry = cases[case_id]
        behavior = entry.get("behavior", "MISSING")
        close = entry.get("behaviorClose", "MISSING")
        by_behavior[behavior] += 1
        by_close[close] += 1
        if behavior not in PASSING or close not in PASSING:
            failing.append((case_id, entry, behavior, close))

    total = len(cases)
    print("Autobahn|Testsuite report: %s (agent %s)" % (args.index, args.agent))
    print("cases run: %d (expected at least %d)" % (total, args.expected))
    print("behavior:      " + ", ".join("%s=%d" % kv for kv in sorted(by_behavior.items())))
    print("behaviorClose: " + ", ".join("%s=%d" % kv for kv in sorted(by_close.items())))

    if failing:
        print("")
        print("failing cases (%d):" % len(failing))
        for case_id, entry, behavior, close in failing:
            print("  %-8s behavior=%-13s behaviorClose=%-13s remoteCloseCode=%s"
                  % (case_id, behavior, close, entry.get("remoteCloseCode")))
        shown = failing[: max(args.details, 0)]
        if shown:
            print("")
            print("details (first %d, from the per-case report files):" % len(shown))
        for case_id, entry, _, _ in shown:
            path = os.path.join(outdir, entry.get("reportfile", ""))
            try:
                with open(path) as f:
                    rep = json.load(f)
            except (OSError, ValueError) as e:
                print("  %s: cannot read %s: %s" % (case_id, path, e))
                continue
            print("  %s [%s] %s" % (case_id, os.path.basename(path),
                                    one_line(rep.get("description", ""), 120)))
            print("      result:      " + one_line(rep.get("result", "")))
            print("      resultClose: " + one_line(rep.get("resultClose", "")))

    ok = True
    print("")
    if total < args.expected:
        print("FAIL: only %d cases in the report, expected %d (did the run crash or time out?)"
              % (total, args.expected))
        ok = False
    if failing:
        print("FAIL: %d of %d cases not OK/INFORMATIONAL" % (len(failing), total))
        ok = False
    if ok:
        print("PASS: all %d cases OK or INFORMATIONAL" % total)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
