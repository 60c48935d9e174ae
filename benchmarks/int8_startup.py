"""Start-up of ``--precision int8``: building the int8 network, with and without FX's stack traces (issue #14).

    .venv/bin/python benchmarks/int8_startup.py [--rounds 4]

Each round starts two fresh Python processes, one after the other, in alternating order: the shipped
build (``scoring_net(lm, choose_runtime("cpu", "int8"))`` of the embedded model, which turns off FX's
per-node stack traces) and the baseline, the same call with FX's default (stack traces recorded, as
before this change). Each process reports the wall and process CPU time of that call alone (the
model is loaded before the clock starts) and whether it imported ``torch._inductor``. Prints Markdown
with the medians. Run it on an idle machine; CPU time is the robust figure on a shared one.
"""

from __future__ import annotations

import argparse
import json
import statistics

import harness

CHILD = r"""
import functools, json, sys, time
from cxrscreen.model import quantize
from cxrscreen.model.files import load_model
from cxrscreen.model.inference import choose_runtime, scoring_net

if sys.argv[1] == "baseline":
    quantize._quiet_fx = functools.partial(quantize._quiet_fx, stack_traces=True)
lm = load_model(None)
rt = choose_runtime("cpu", "int8")
w, c = time.perf_counter(), time.process_time()
scoring_net(lm, rt)
print(json.dumps({"wall": time.perf_counter() - w, "cpu": time.process_time() - c,
                  "inductor": "torch._inductor" in sys.modules}))
"""


def one(form: str) -> dict:
    return harness.run_code(CHILD, form)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    runs = harness.alternate(args.rounds, one)
    print("| build | wall s (median) | CPU s (median) | imports torch._inductor |")
    print("|---|---|---|---|")
    for form, label in (("baseline", "FX stack traces recorded (before)"), ("shipped", "stack traces off (shipped)")):
        rs = runs[form]
        print(f"| {label} | {statistics.median(x['wall'] for x in rs):.2f} | "
              f"{statistics.median(x['cpu'] for x in rs):.2f} | {'yes' if all(x['inductor'] for x in rs) else 'no'} |")
    print(f"\n{args.rounds} rounds; every run: " + json.dumps(runs))


if __name__ == "__main__":
    main()
